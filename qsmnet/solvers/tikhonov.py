"""Closed-form L2-regularised inversion (Tikhonov; the literature's CFL2, Bilgic et al. 2014).

    chi = argmin ||A chi - f||^2 + lam ||R chi||^2  =  F^-1[ D / (D^2 + lam |R(k)|^2) F f ]

with R the identity (``|R|^2 = 1``) or the periodic gradient (``|R|^2`` = the Laplacian symbol of
:func:`qsmnet.physics.linalg.gradient_kernel`, in 1/mm^2). One FFT pair; the k = 0 mean is left
at zero.
"""

from __future__ import annotations

import torch

from .base import Problem, finish, prepare, safe_reciprocal
from .lam import as_lambda, discrepancy_search, discrepancy_target, is_auto, lambda_summary
from .registry import register

_REGULARISERS = ("gradient", "identity")


def _filter(p: Problem, lam: torch.Tensor, regulariser: str) -> torch.Tensor:
    d = p.op.kernel
    r2 = p.laplacian() if regulariser == "gradient" else torch.ones_like(d)
    return d * safe_reciprocal(d * d + lam * r2)


def auto_lambda(p: Problem, regulariser: str = "gradient", lo: float = 1e-5, hi: float = 10.0):
    """Per-sample lambda (B, 1, 1, 1, 1) by the discrepancy principle (see :mod:`qsmnet.solvers.lam`)."""
    target = discrepancy_target(p)

    def residual(lam):
        chi = p.op.filter(p.field, _filter(p, lam, regulariser))
        r = (p.mask * (p.op.A(chi) - p.field)).flatten(1).norm(dim=1)
        return r / p.field.flatten(1).norm(dim=1).clamp_min(1e-30)

    return discrepancy_search(residual, target, lo, hi)


@register("tikhonov")
def tikhonov(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    lam: float | str = 0.02,
    regulariser: str = "gradient",
) -> torch.Tensor:
    """Closed-form Tikhonov (CFL2) dipole inversion.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (0), ``residual`` and the ``lambda`` used.
        lam: regularisation weight (mm^2 for the gradient regulariser), or ``"auto"`` for a
            per-sample discrepancy-principle choice. Default 0.02: tuned on the smooth
            phantoms of ``scripts/tune_solvers.py`` (seeds x noise x B0 tilts; see that script
            for the nRMSE table).
        regulariser: ``"gradient"`` (default) or ``"identity"``.

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    if regulariser not in _REGULARISERS:
        raise ValueError(f"regulariser must be one of {_REGULARISERS}, got {regulariser!r}")
    p = prepare(field, mask, geometry)
    lam_t = auto_lambda(p, regulariser) if is_auto(lam) else as_lambda(lam, p)
    chi = p.op.filter(p.field, _filter(p, lam_t, regulariser))
    return finish(p, chi, info, 0, **{"lambda": lambda_summary(lam_t)})
