"""Geometric phantoms: random ellipsoids, cuboids and cylinders (vessels) on a textured background.

In the spirit of DeepQSM (Bollmann et al., NeuroImage 2019): networks trained on random shapes
learn the dipole inversion rather than brain anatomy. Values cover the in vivo range (about
-0.2 to +0.5 ppm) with heavier tails for hemorrhage (up to +1.5 ppm) and calcification (down to
-0.8 ppm); a multi-scale smooth texture is added everywhere so that images are not only
piecewise constant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .textures import as_rng, grid_mm, random_rotation, smooth_random_field

#: Value range (ppm) of ordinary sources; ``TAIL_PROB`` of them come from the tails instead.
VALUE_RANGE = (-0.2, 0.5)
HEMORRHAGE_RANGE = (0.5, 1.5)
CALCIFICATION_RANGE = (-0.8, -0.2)
VESSEL_RANGE = (0.2, 0.6)
TAIL_PROB = 0.1


@dataclass
class Phantom:
    """A susceptibility phantom on a grid.

    Attributes:
        chi: (X, Y, Z) float32 susceptibility in ppm, zero outside ``mask``.
        mask: (X, Y, Z) float32 0/1 region where the field is known (the "brain").
        labels: (X, Y, Z) int16 tissue labels (brain phantoms; see :mod:`qsmnet.sim.brain`) or None.
        info: what was drawn (for sidecars and debugging).
    """

    chi: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor | None = None
    info: dict | None = None


def _draw_value(rng: np.random.Generator) -> float:
    u = rng.uniform()
    if u < TAIL_PROB / 2:
        return float(rng.uniform(*HEMORRHAGE_RANGE))
    if u < TAIL_PROB:
        return float(rng.uniform(*CALCIFICATION_RANGE))
    return float(rng.uniform(*VALUE_RANGE))


def paint_shape(
    chi: torch.Tensor,
    coords: list[torch.Tensor],
    voxel_size: Sequence[float],
    kind: str,
    center: np.ndarray,
    semi: np.ndarray,
    rot: np.ndarray,
    value: float,
) -> torch.Tensor | None:
    """Overwrite the voxels of one shape in ``chi`` (in place) with ``value``.

    Only the shape's bounding box is evaluated, so many small shapes are cheap.

    Args:
        chi: (X, Y, Z) tensor to paint into.
        coords: :func:`grid_mm` coordinates of ``chi``'s grid (mm).
        voxel_size: mm per voxel.
        kind: "ellipsoid", "cuboid" or "cylinder" (axis along the rotated third axis; semi-axes
            (radius, radius, half length)).
        center: (3,) centre in mm (grid centred on 0).
        semi: (3,) semi-axes (mm).
        rot: (3, 3) rotation, columns the shape's axes in voxel-axis (mm) space.
        value: chi (ppm) to write.

    Returns:
        The boolean occupancy of the bounding box (or None when the box misses the grid).
    """
    reach = float(np.linalg.norm(semi)) if kind != "ellipsoid" else float(np.max(semi))
    sl = []
    for ax in range(3):
        n = chi.shape[ax]
        c0 = center[ax] / voxel_size[ax] + (n - 1) / 2.0
        r = reach / voxel_size[ax]
        lo, hi = max(0, int(math.floor(c0 - r))), min(n, int(math.ceil(c0 + r)) + 1)
        if lo >= hi:
            return None
        sl.append(slice(lo, hi))
    d = [coords[ax][tuple(sl[a] if a == ax else slice(None) for a in range(3))] - float(center[ax])
         for ax in range(3)]
    r = torch.as_tensor(rot, dtype=torch.float32)
    u = [(d[0] * r[0, i] + d[1] * r[1, i] + d[2] * r[2, i]) / float(semi[i]) for i in range(3)]
    if kind == "ellipsoid":
        inside = u[0] ** 2 + u[1] ** 2 + u[2] ** 2 <= 1.0
    elif kind == "cuboid":
        inside = (u[0].abs() <= 1) & (u[1].abs() <= 1) & (u[2].abs() <= 1)
    elif kind == "cylinder":
        inside = (u[0] ** 2 + u[1] ** 2 <= 1.0) & (u[2].abs() <= 1)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    box = chi[tuple(sl)]
    box[inside] = value
    return inside


def random_mask(shape, voxel_size, rng: np.random.Generator, full_prob: float = 0.2) -> torch.Tensor:
    """A random "head-like" mask: a large deformed ellipsoid, or (``full_prob``) the whole box.

    Returns:
        (X, Y, Z) float32 0/1 tensor.
    """
    shape = tuple(int(s) for s in shape)
    if rng.uniform() < full_prob:
        return torch.ones(shape, dtype=torch.float32)
    fov = np.asarray(shape) * np.asarray(voxel_size)
    semi = fov / 2 * rng.uniform(0.7, 1.05, size=3)
    x = grid_mm(shape, voxel_size)
    level = sum((x[i] / float(semi[i])) ** 2 for i in range(3))
    bumps = smooth_random_field(shape, voxel_size, rng, scales_mm=(float(fov.min()) / 6,), weights=(1.0,))
    return (level + 0.15 * bumps < 1.0).to(torch.float32)


def shapes_phantom(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    seed=None,
    *,
    n_shapes: int | None = None,
    n_vessels: int | None = None,
    texture_ppm: tuple[float, float] = (0.0, 0.05),
    mask: bool = True,
) -> Phantom:
    """Random geometric susceptibility phantom.

    Args:
        shape: (X, Y, Z) grid.
        voxel_size: mm per voxel; shape sizes are physical (mm), so they scale with the grid.
        seed: int, SeedSequence or numpy Generator.
        n_shapes: number of ellipsoids/cuboids/cylinders (default: random, about 20-60 per
            64 mm cube of field of view).
        n_vessels: number of long thin cylinders (veins, +0.2 to +0.6 ppm); default random 0-6.
        texture_ppm: range of the standard deviation (ppm) of the smooth multi-scale texture
            added to the whole volume.
        mask: draw a random head-like mask (:func:`random_mask`); False: the whole box.

    Returns:
        :class:`Phantom` with chi (ppm) zero outside the mask and labels None.
    """
    rng = as_rng(seed)
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size)
    fov = np.asarray(shape, dtype=np.float64) * np.asarray(vs)
    scale = float(np.prod(fov) / 64.0**3)
    if n_shapes is None:
        n_shapes = int(rng.integers(20, 61) * max(scale, 0.05) ** 0.7)
    if n_vessels is None:
        n_vessels = int(rng.integers(0, 7))
    coords = grid_mm(shape, vs)
    chi = torch.zeros(shape, dtype=torch.float32)
    smin = float(fov.min())
    # draw all parameters first (fixed order: reproducible), then paint the largest first
    items = []
    for _ in range(n_shapes):
        kind = ("ellipsoid", "cuboid", "cylinder")[int(rng.choice(3, p=(0.55, 0.25, 0.2)))]
        size = rng.uniform(1.0, max(1.5, 0.18 * smin))
        semi = size * rng.uniform(0.4, 1.0, size=3)
        center = (rng.uniform(-0.5, 0.5, size=3)) * fov
        items.append((kind, center, semi, random_rotation(rng), _draw_value(rng)))
    for _ in range(n_vessels):
        radius = rng.uniform(0.5, 2.0)
        half = rng.uniform(0.15, 0.5) * float(fov.max())
        center = rng.uniform(-0.4, 0.4, size=3) * fov
        items.append(("cylinder", center, np.array([radius, radius, half]), random_rotation(rng),
                      float(rng.uniform(*VESSEL_RANGE))))
    items.sort(key=lambda t: -float(np.prod(t[2])))
    for kind, center, semi, rot, value in items:
        paint_shape(chi, coords, vs, kind, center, semi, rot, value)
    tex_std = rng.uniform(*texture_ppm)
    if tex_std > 0:
        chi += float(tex_std) * smooth_random_field(shape, vs, rng, scales_mm=(1.0, 3.0, 10.0))
    m = random_mask(shape, vs, rng) if mask else torch.ones(shape, dtype=torch.float32)
    chi *= m
    return Phantom(chi=chi, mask=m, labels=None,
                   info={"phantom": "shapes", "n_shapes": n_shapes, "n_vessels": n_vessels,
                         "texture_std_ppm": float(tex_std)})
