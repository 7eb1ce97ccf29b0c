"""Shared test fixtures: tiny, odd-sized, seeded volumes and affines. Keep this file small."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def rotation_matrix(angles_deg) -> np.ndarray:
    """Rotation about x, then y, then z (extrinsic), angles in degrees: (3, 3) float64."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """(4, 4) affine: rotated 20/10/5 degrees, voxels 1 x 1.5 x 2 mm, non-zero origin."""
    a = np.eye(4)
    a[:3, :3] = rotation_matrix((20.0, 10.0, 5.0)) @ np.diag([1.0, 1.5, 2.0])
    a[:3, 3] = [-40.0, 12.5, 7.0]
    return a


@pytest.fixture
def smooth_volume(rng) -> np.ndarray:
    """(15, 17, 13) float64 smooth random map with ~0.05 ppm amplitude."""
    from scipy.ndimage import gaussian_filter

    v = gaussian_filter(rng.standard_normal((15, 17, 13)), 1.5)
    return 0.05 * v / v.std()


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)
