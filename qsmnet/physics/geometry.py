"""Acquisition geometry: grid shape, voxel size and the B0 direction in voxel axes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: Tolerance (degrees) under which an affine counts as not oblique.
OBLIQUE_TOL_DEG = 0.01


def normalise(v) -> tuple[float, float, float]:
    """Return ``v`` (3 numbers) scaled to unit length, as a tuple of floats."""
    a = np.asarray(v, dtype=np.float64).reshape(3)
    n = float(np.linalg.norm(a))
    if not math.isfinite(n) or n == 0.0:
        raise ValueError(f"B0 direction must be a non-zero finite 3-vector, got {list(a)}")
    return tuple(float(x) for x in a / n)


def affine_rotation(affine) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Split a NIfTI affine into its rotation (voxel scaling removed) and voxel size (mm).

    Returns:
        R: (3, 3) matrix whose columns are the unit world directions of the voxel axes i, j, k
            (a reflection is kept: det(R) may be -1).
        voxel_size: column norms of the affine's 3x3 part, in mm.
    """
    m = np.asarray(affine, dtype=np.float64)[:3, :3]
    vs = np.linalg.norm(m, axis=0)
    if np.any(vs == 0) or not np.all(np.isfinite(vs)):
        raise ValueError("affine has a zero or non-finite voxel axis")
    return m / vs, tuple(float(v) for v in vs)


def b0_dir_from_affine(affine, b0_world=(0.0, 0.0, 1.0)) -> tuple[float, float, float]:
    """B0 direction in voxel axes from a NIfTI affine: ``normalise(R.T @ b0_world)``.

    NIfTI affines map voxel indices to scanner (RAS+) world coordinates, and the main field of a
    standard scanner points along world z. ``R`` is the affine's rotation with voxel scaling
    removed, so an oblique acquisition is handled by tilting the dipole kernel, with no resampling.
    """
    R, _ = affine_rotation(affine)
    return normalise(R.T @ np.asarray(b0_world, dtype=np.float64))


@dataclass(frozen=True)
class Geometry:
    """Where a volume lives: its grid, voxel size and B0 direction.

    Attributes:
        shape: grid size (X, Y, Z) in voxels.
        voxel_size: voxel edge lengths (mm) along i, j, k.
        b0_dir: unit vector of the main field in voxel axes (i, j, k); normalised on construction.
    """

    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float] = (1.0, 1.0, 1.0)
    b0_dir: tuple[float, float, float] = field(default=(0.0, 0.0, 1.0))

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be three positive integers, got {self.shape}")
        vs = tuple(float(v) for v in np.asarray(self.voxel_size, dtype=np.float64).reshape(-1))
        if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
            raise ValueError(f"voxel_size must be three positive numbers (mm), got {self.voxel_size}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "voxel_size", vs)
        object.__setattr__(self, "b0_dir", normalise(self.b0_dir))

    @classmethod
    def from_affine(cls, affine, shape) -> Geometry:
        """Geometry of a NIfTI image from its affine and the first three entries of its shape."""
        _, vs = affine_rotation(affine)
        return cls(tuple(shape)[:3], vs, b0_dir_from_affine(affine))

    @property
    def tilt_deg(self) -> float:
        """Angle (degrees) between B0 and the voxel k axis."""
        return math.degrees(math.acos(min(1.0, abs(self.b0_dir[2]))))

    def with_(self, **changes) -> Geometry:
        """A copy with some fields replaced (e.g. ``g.with_(shape=(64, 64, 64))``)."""
        return Geometry(**{**self.__dict__, **changes})


def geometry_list(
    geometry: Geometry | Sequence[Geometry], batch: int | None = None, shape: Sequence[int] | None = None
) -> tuple[Geometry, ...]:
    """One :class:`Geometry` per sample: the one place a geometry or a list of them is unpacked.

    Args:
        geometry: one geometry (for every sample) or one per sample.
        batch: the number of samples; a single geometry is repeated to it (None: as given).
        shape: if given, each geometry's grid is set to it (a patch cut from a larger volume keeps
            its voxel size and B0 direction).

    Raises:
        ValueError: no geometry, or a count that is neither 1 nor ``batch``.
    """
    geoms = (geometry,) if isinstance(geometry, Geometry) else tuple(geometry)
    if not geoms or not all(isinstance(g, Geometry) for g in geoms):
        raise ValueError(f"expected a Geometry or a sequence of them, got {geometry!r}")
    if batch is not None:
        if len(geoms) == 1:
            geoms = geoms * batch
        elif len(geoms) != batch:
            raise ValueError(f"{len(geoms)} geometries for a batch of {batch}")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        geoms = tuple(g if g.shape == shape else g.with_(shape=shape) for g in geoms)
    return geoms


def is_oblique(affine, tol_deg: float = OBLIQUE_TOL_DEG) -> bool:
    """True when a voxel axis of ``affine`` is not parallel to a world axis (within ``tol_deg``)."""
    R, _ = affine_rotation(affine)
    cos_max = np.abs(R).max(axis=0)
    return bool(np.any(np.degrees(np.arccos(np.clip(cos_max, -1, 1))) > tol_deg))
