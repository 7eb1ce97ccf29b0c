"""Physics-aware augmentation: symmetries of the voxel grid that carry the geometry along.

Only exact operations are used: permutations of the voxel axes and flips (together the 48
symmetries of the cube, which include every 90-degree rotation). Each one maps a volume to a new
grid without interpolation, and the geometry follows: the voxel size and the B0 direction are
permuted with the axes, and a flip of axis i negates ``b0_dir[i]``. Then the dipole model still
holds: ``T(forward_field(chi, g)) == forward_field(T(chi), T(g))``, exactly on FFT grids of odd
size and up to the Nyquist sample (which the kernel symmetrises for an oblique B0, a ~1e-3
relative effect) on even ones. Arbitrary-angle
rotations would need resampling, which breaks that identity; random B0 tilts in the simulation
cover those orientations instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qsmnet.physics import Geometry


@dataclass(frozen=True)
class GridTransform:
    """A cube symmetry: first permute the voxel axes (``perm``), then flip the axes in ``flips``.

    Attributes:
        perm: new axis a is old axis ``perm[a]``.
        flips: three bools, flip new axis a when ``flips[a]``.
    """

    perm: tuple[int, int, int] = (0, 1, 2)
    flips: tuple[bool, bool, bool] = (False, False, False)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a (..., X, Y, Z) tensor (the last three dims are the voxel axes)."""
        nd = x.dim()
        lead = list(range(nd - 3))
        y = x.permute(*lead, *(nd - 3 + p for p in self.perm))
        dims = [nd - 3 + a for a in range(3) if self.flips[a]]
        if dims:
            y = torch.flip(y, dims)
        return y.contiguous()

    def geometry(self, g: Geometry) -> Geometry:
        """The geometry of the transformed grid."""
        b = [g.b0_dir[p] for p in self.perm]
        b = [-v if f else v for v, f in zip(b, self.flips, strict=False)]
        return Geometry(
            tuple(g.shape[p] for p in self.perm),
            tuple(g.voxel_size[p] for p in self.perm),
            tuple(b),
        )

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flips)


def random_transform(rng: np.random.Generator, flip: bool = True, permute: bool = True,
                     axes: Sequence[int] = (0, 1, 2)) -> GridTransform:
    """A random cube symmetry.

    Args:
        rng: random generator.
        flip: allow flips (each axis with probability 1/2).
        permute: allow permutations of the axes in ``axes`` (e.g. (0, 1) keeps the slice axis
            in place, so thick-slice data stay thick-slice along k).
        axes: the axes that may be permuted among themselves.
    """
    perm = [0, 1, 2]
    if permute and len(axes) > 1:
        order = list(axes)
        shuffled = [order[i] for i in rng.permutation(len(order))]
        for a, b in zip(order, shuffled, strict=False):
            perm[a] = b
    flips = tuple(bool(v) for v in rng.integers(0, 2, size=3)) if flip else (False, False, False)
    return GridTransform(tuple(perm), flips)


#: Grid flips for test-time averaging, in the order ``flips=N`` takes them: the identity, the point
#: reflection, then single-axis flips and their complements (a varied set for N = 2 and 4).
FLIPS = tuple(GridTransform((0, 1, 2), tuple(bool(int(c)) for c in code))
              for code in ("000", "111", "100", "011", "010", "101", "001", "110"))


def flip_average(fn, field: torch.Tensor, mask: torch.Tensor, geometry: Geometry,
                 extra: torch.Tensor | None = None, flips: int = 1) -> torch.Tensor:
    """Mean of ``fn(T(field), T(mask), T(geometry), T(extra))`` mapped back by ``T``, over the first
    ``flips`` of :data:`FLIPS` (flips are their own inverse): test-time flip averaging of a network.

    ``fn`` takes (1, C, X, Y, Z) tensors, a Geometry and ``extra`` (or None) and returns (1, 1, X, Y, Z).
    """
    if flips not in (1, 2, 4, 8):
        raise ValueError(f"flips must be 1, 2, 4 or 8, got {flips}")
    total = None
    for t in FLIPS[:flips]:
        out = t.apply(fn(t.apply(field), t.apply(mask), t.geometry(geometry),
                         None if extra is None else t.apply(extra)))
        total = out if total is None else total.add_(out)
    return total / flips


def check_scale_range(scale_range: Sequence[float] | None) -> tuple[float, float] | None:
    """``(lo, hi)`` of a contrast augmentation as floats (None stays None); 0 < lo <= hi."""
    if scale_range is None:
        return None
    lo, hi = (float(v) for v in scale_range)
    if not 0.0 < lo <= hi:
        raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {list(scale_range)}")
    return lo, hi


def contrast_factor(rng: np.random.Generator, scale_range: tuple[float, float]) -> float:
    """A contrast factor drawn log-uniformly in ``scale_range``. The dipole model is linear, so
    (chi, field) -> (s chi, s field) is another valid sample: a network trained on such pairs
    learns the same map at every susceptibility contrast."""
    lo, hi = scale_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
