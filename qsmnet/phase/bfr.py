"""Background-field removal: total field (ppm) -> local field (ppm) of the sources inside the mask.

- :func:`vsharp`: V-SHARP (Li et al., NeuroImage 2011; Wu et al., MRM 2012). The field of sources
  outside the mask is harmonic inside it, so a spherical mean value (SMV) filter leaves it
  unchanged where the sphere fits in the mask: ``(delta - SMV_r) * total = (delta - SMV_r) *
  local`` there. Each voxel takes the largest radius whose sphere fits; the combined map is then
  deconvolved by ``delta - SMV_rmax`` (truncated where the kernel is below ``threshold``).
- :func:`pdf`: projection onto dipole fields (Liu et al., NMR Biomed 2011). The background field
  is the dipole field of the susceptibility outside the mask that best explains the total field
  inside it (weighted least squares, conjugate gradients on the normal equations, on a grid
  zero-padded so that sources may also lie beyond the volume's edges); the local field is what
  is left.

Both answer with the local field demeaned inside their mask (the mean field is not measurable)
and run on the field's device (FFTs by torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qsmnet.physics import DipoleOperator, Geometry, next_fast_len
from qsmnet.physics.linalg import conjugate_gradient

from ._util import as_tensor, sphere_kernel

#: V-SHARP radii (mm), largest first: 12 mm in the brain's interior, down to 2 mm at its edge.
VSHARP_RADII_MM = (12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0)


def _demean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x - x[m].mean()) * m if bool(m.any()) else x * 0


def vsharp(
    total,
    mask,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    radii_mm: Sequence[float] = VSHARP_RADII_MM,
    threshold: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-SHARP background-field removal (see the module docstring).

    Args:
        total: (X, Y, Z) total field (ppm), tensor or array (any device).
        mask: (X, Y, Z) region where the total field is known (non-zero inside).
        voxel_size: voxel size (mm); the spheres are round in mm.
        radii_mm: SMV radii (mm), any order; radii whose sphere fits nowhere are skipped.
        threshold: truncation of the deconvolution, ``|1 - SMV_rmax(k)| < threshold`` -> 0.

    Returns:
        ``(local, eroded_mask)``: (X, Y, Z) local field (ppm, float32, zero-mean inside the
        mask) and the bool mask eroded by the smallest radius, where it is valid.

    Raises:
        ValueError: empty mask, or no radius fits in it.
    """
    f = as_tensor(total)
    m = as_tensor(mask, device=f.device) != 0
    if not bool(m.any()):
        raise ValueError("V-SHARP needs a non-empty mask")
    rmax = max(float(r) for r in radii_mm)
    pad = [int(rmax / v) + 1 for v in voxel_size]
    shape = tuple(next_fast_len(n + p) for n, p in zip(f.shape, pad, strict=True))
    sl = tuple(slice(0, n) for n in f.shape)

    def spec(x):
        return torch.fft.rfftn(x, s=shape)

    def back(X):
        return torch.fft.irfftn(X, s=shape)[sl]

    F = spec(f * m)
    outside = torch.ones(shape, dtype=torch.float32, device=f.device)  # beyond the grid counts as outside
    outside[sl] = (~m).to(torch.float32)
    out_of_mask = torch.fft.rfftn(outside)
    combined = torch.zeros_like(f)
    filled = torch.zeros_like(m)
    hp_max = None
    eroded = None
    for r in sorted((float(r) for r in radii_mm), reverse=True):
        K = spec(sphere_kernel(shape, voxel_size, r, device=f.device))
        er = (back(out_of_mask * K) < 1e-3) & m  # sphere of radius r lies inside the mask
        if not bool(er.any()):
            continue
        if hp_max is None:
            hp_max = 1.0 - K.real
        new = er & ~filled
        combined = torch.where(new, back(F * (1.0 - K)), combined)
        filled |= er
        eroded = er
    if hp_max is None:
        raise ValueError(f"no V-SHARP radius in {tuple(radii_mm)} mm fits inside the mask")
    inv = torch.where(hp_max.abs() >= threshold, 1.0 / hp_max, torch.zeros_like(hp_max))
    local = back(spec(combined * eroded) * inv)
    return _demean(local, eroded), eroded


def pdf(
    total,
    mask,
    geometry: Geometry,
    *,
    weight=None,
    pad: int = 32,
    iterations: int = 50,
    tol: float = 1e-4,
    info: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection onto dipole fields (see the module docstring).

    Solves ``min_x || W M (total - D * (Mbar x)) ||^2`` for the susceptibility x outside the mask
    (Mbar = 1 - M on the padded grid) by conjugate gradients on the normal equations, with
    :class:`~qsmnet.physics.DipoleOperator` (circular on the padded grid).

    Args:
        total: (X, Y, Z) total field (ppm), tensor or array (any device).
        mask: (X, Y, Z) region where the total field is known (non-zero inside).
        geometry: voxel size and B0 direction (voxel axes); its shape must match.
        weight: optional (X, Y, Z) data weight W inside the mask (e.g. 1 / field std); default 1.
        pad: voxels of zero padding on every side (room for sources beyond the volume).
        iterations: CG iteration cap.
        tol: CG relative-residual tolerance.
        info: if given, receives ``iterations`` and ``residual`` of CG.

    Returns:
        ``(local, mask)``: local field (ppm, float32, zero-mean inside the mask) and the bool mask.

    Raises:
        ValueError: empty mask, or a geometry of another shape.
    """
    f = as_tensor(total)
    dev = f.device
    if tuple(f.shape) != geometry.shape:
        raise ValueError(f"total field shape {tuple(f.shape)} != geometry shape {geometry.shape}")
    m = as_tensor(mask, device=dev) != 0
    if not bool(m.any()):
        raise ValueError("PDF needs a non-empty mask")
    w = torch.ones_like(f) if weight is None else as_tensor(weight, device=dev)
    w = w / w[m].mean().clamp_min(1e-30)
    big = tuple(next_fast_len(n + 2 * pad) for n in f.shape)
    lo = [pad] * 3
    sl = tuple(slice(a, a + n) for a, n in zip(lo, f.shape, strict=True))

    def embed(x):
        out = torch.zeros(big, dtype=torch.float32, device=dev)
        out[sl] = x
        return out

    W2 = embed((w * w) * m)
    inside = embed(m.to(torch.float32))
    outside = 1.0 - inside
    op = DipoleOperator(geometry.with_(shape=big), pad=0).to(dev)

    def normal(x):
        return outside * op.A_adjoint(W2 * op.A(outside * x))

    b = outside * op.A_adjoint(W2 * embed(f * m))
    x, it, rel = conjugate_gradient(lambda v: normal(v[0])[None], b[None], max_iter=iterations, tol=tol)
    background = op.A(outside * x[0])[sl]
    if info is not None:
        info.update(iterations=it, residual=rel)
    return _demean(f - background, m), m
