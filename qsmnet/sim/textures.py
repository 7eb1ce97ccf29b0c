"""Random building blocks shared by the phantoms and the forward simulation.

Everything random draws from a :class:`numpy.random.Generator` passed in by the caller, so a seed
fixes the result. Heavy array work runs in torch float32 on the CPU (FFTs, interpolation).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch


def as_rng(seed_or_rng) -> np.random.Generator:
    """A numpy Generator from a seed (int, SeedSequence, None) or a Generator (returned as is)."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


@functools.lru_cache(maxsize=16)
def _k2(shape: tuple[int, int, int], voxel_size: tuple[float, float, float]) -> torch.Tensor:
    """|k|^2 (1/mm^2) on the rfftn half spectrum of ``shape``."""
    fx = np.fft.fftfreq(shape[0], d=voxel_size[0])
    fy = np.fft.fftfreq(shape[1], d=voxel_size[1])
    fz = np.fft.rfftfreq(shape[2], d=voxel_size[2])
    kx, ky, kz = np.meshgrid(fx, fy, fz, indexing="ij", sparse=True)
    return torch.as_tensor(kx * kx + ky * ky + kz * kz, dtype=torch.float32)


def smooth_random_field(
    shape: Sequence[int],
    voxel_size: Sequence[float],
    rng: np.random.Generator,
    scales_mm: Sequence[float] = (2.0, 6.0, 20.0),
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Gaussian random field with correlation lengths ``scales_mm``, normalised to unit std.

    White noise is filtered in one inverse FFT by a sum of Gaussian spectral envelopes (one per
    scale, weight ``weights[i]``, random in [0.2, 1] by default), so textures at several scales
    come at the cost of one FFT. The field is periodic over the grid.

    Args:
        shape: (X, Y, Z) grid.
        voxel_size: mm per voxel (scales are physical, so anisotropic voxels are handled).
        rng: random generator.
        scales_mm: correlation lengths (mm) of the components.
        weights: amplitude of each component (before the global normalisation).

    Returns:
        (X, Y, Z) float32 CPU tensor, zero mean and unit standard deviation.
    """
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    if weights is None:
        weights = rng.uniform(0.2, 1.0, size=len(scales_mm))
    filt = None
    for s, w in zip(scales_mm, weights, strict=False):
        env = float(w) * _envelope(shape, vs, float(s))
        filt = env if filt is None else filt + env
    # complex white noise drawn directly in the half spectrum: one inverse FFT instead of two
    half = (shape[0], shape[1], shape[2] // 2 + 1)
    spec = torch.from_numpy(rng.standard_normal(half + (2,), dtype=np.float32))
    out = torch.fft.irfftn(torch.view_as_complex(spec * filt[..., None]), s=shape)
    return out / out.std().clamp_min(1e-12)


@functools.lru_cache(maxsize=64)
def _envelope(shape: tuple[int, int, int], voxel_size: tuple[float, float, float],
              scale: float) -> torch.Tensor:
    """Amplitude spectrum exp(-2 pi^2 s^2 k^2) of a Gaussian blur of std ``scale`` mm, normalised to
    unit energy, with the mean (k = 0) removed."""
    env = torch.exp(-2.0 * math.pi**2 * scale**2 * _k2(shape, voxel_size))
    env[0, 0, 0] = 0.0
    return env / env.square().mean().sqrt().clamp_min(1e-12)


def random_rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """A random 3x3 rotation matrix about a uniformly random axis by an angle up to ``max_deg``."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def rotation_between(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Rotation matrix R (3x3) with ``R @ a_hat = b_hat`` (the smallest rotation; Rodrigues)."""
    a = np.asarray(a, dtype=np.float64) / np.linalg.norm(a)
    b = np.asarray(b, dtype=np.float64) / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        if c > 0:
            return np.eye(3)
        # opposite: rotate by pi about any axis orthogonal to a
        p = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
        u = np.cross(a, p)
        u /= np.linalg.norm(u)
        return 2 * np.outer(u, u) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k * (1 / (1 + c))


def random_b0_dir(rng: np.random.Generator, max_tilt_deg: float) -> tuple[float, float, float]:
    """B0 direction (voxel axes) uniform on the spherical cap within ``max_tilt_deg`` of +k."""
    cos_max = math.cos(math.radians(min(max(float(max_tilt_deg), 0.0), 180.0)))
    cos_t = rng.uniform(cos_max, 1.0)
    sin_t = math.sqrt(max(0.0, 1.0 - cos_t * cos_t))
    phi = rng.uniform(0.0, 2 * math.pi)
    return (sin_t * math.cos(phi), sin_t * math.sin(phi), cos_t)


def random_voxel_size(rng: np.random.Generator, low: Sequence[float], high: Sequence[float]) -> tuple:
    """Voxel size (mm) drawn uniformly in [low, high] per axis; axes 0 and 1 share one draw when
    their ranges are equal (square in-plane pixels, as acquired)."""
    low = [float(v) for v in low]
    high = [float(v) for v in high]
    vs = [rng.uniform(lo, hi) if hi > lo else lo for lo, hi in zip(low, high, strict=False)]
    if low[0] == low[1] and high[0] == high[1]:
        vs[1] = vs[0]
    return tuple(float(v) for v in vs)


def grid_mm(shape: Sequence[int], voxel_size: Sequence[float]) -> list[torch.Tensor]:
    """Voxel-centre coordinates (mm) of a grid centred on 0, as three broadcastable tensors."""
    out = []
    for ax, (n, v) in enumerate(zip(shape, voxel_size, strict=False)):
        c = (torch.arange(int(n), dtype=torch.float32) - (int(n) - 1) / 2.0) * float(v)
        view = [1, 1, 1]
        view[ax] = int(n)
        out.append(c.view(view))
    return out
