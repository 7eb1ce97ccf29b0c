"""Small helpers shared by the phase steps: tensor conversion, wrapping, spheres in mm."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def as_tensor(x, dtype=torch.float32, device=None) -> torch.Tensor:
    """``x`` (numpy array or tensor) as a tensor of ``dtype`` on ``device`` (default: x's own, or CPU)."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device if device is not None else x.device)
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype, device=device)


def wrap(x: torch.Tensor) -> torch.Tensor:
    """Phase wrapped to [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def sphere_kernel(
    shape: Sequence[int], voxel_size: Sequence[float], radius_mm: float, device=None
) -> torch.Tensor:
    """Normalised spherical mean-value kernel of ``radius_mm`` (mm), centred at index 0 (FFT layout).

    Returns:
        (X, Y, Z) float32 tensor summing to 1: 1/n on the voxels whose centre lies within the radius.
    """
    axes = []
    for n, v in zip(shape, voxel_size, strict=True):
        i = torch.arange(n, dtype=torch.float64, device=device)
        axes.append(torch.minimum(i, n - i) * float(v))
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    ball = (x * x + y * y + z * z <= float(radius_mm) ** 2 + 1e-9).to(torch.float32)
    return ball / ball.sum()
