"""Direct k-space division: truncated k-space division (TKD) and truncated SVD (TSVD).

Both divide the field's spectrum by the dipole kernel D where ``|D| > threshold``; they differ in
what they do on the ill-conditioned cone ``|D| <= threshold``:

* ``tkd`` (Shmueli et al. 2009) replaces D there by ``threshold * sign(D)``, so the inverse is
  clipped to ``1 / threshold`` (a slight underestimate of chi, visible streaking for small
  thresholds);
* ``tsvd`` (Wharton et al. 2010) sets the inverse to 0 there (no streaks, more underestimation).

One FFT pair each; no iterations.
"""

from __future__ import annotations

import torch

from .base import finish, prepare
from .registry import register


def _truncated_inverse(d: torch.Tensor, threshold: float, zero: bool) -> torch.Tensor:
    if not 0 < threshold < 2.0 / 3.0:
        raise ValueError(f"threshold must be in (0, 2/3), got {threshold}")
    big = d.abs() > threshold
    inv = 1.0 / torch.where(big, d, torch.ones_like(d))
    if zero:
        return torch.where(big, inv, torch.zeros_like(d))
    clipped = torch.where(d >= 0, torch.full_like(d, 1.0 / threshold), torch.full_like(d, -1.0 / threshold))
    clipped = torch.where(d == 0, torch.zeros_like(d), clipped)
    return torch.where(big, inv, clipped)


@register("tkd")
def tkd(field, mask, geometry, *, info: dict | None = None, threshold: float = 0.25) -> torch.Tensor:
    """Truncated k-space division.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (0) and ``residual``.
        threshold: |D| below which the inverse kernel is clipped to ``sign(D) / threshold``.
            Default 0.25: best of {0.1, 0.15, 0.19, 0.25} on the 8 brain phantoms of
            ``scripts/tune_solvers.py`` (mean nRMSE 55.4 %; the literature's 0.19: 56.2 %).

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    chi = p.op.filter(p.field, _truncated_inverse(p.op.kernel, float(threshold), zero=False))
    return finish(p, chi, info, 0)


@register("tsvd")
def tsvd(field, mask, geometry, *, info: dict | None = None, threshold: float = 0.1) -> torch.Tensor:
    """Truncated SVD: inverse kernel zeroed where ``|D| <= threshold``.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (0) and ``residual``.
        threshold: |D| at or below which the inverse is 0. Default 0.1: best of
            {0.05, 0.1, 0.15, 0.2} on the 8 brain phantoms of ``scripts/tune_solvers.py``
            (mean nRMSE 58.3 %).

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    chi = p.op.filter(p.field, _truncated_inverse(p.op.kernel, float(threshold), zero=True))
    return finish(p, chi, info, 0)
