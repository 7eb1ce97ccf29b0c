"""Closed-form L2-regularised inversion (Tikhonov; the literature's CFL2, Bilgic et al. 2014).

    chi = argmin ||A chi - f||^2 + lam ||R chi||^2  =  F^-1[ D / (D^2 + lam |R(k)|^2) F f ]

with R the identity (``|R|^2 = 1``) or the periodic gradient (``|R|^2`` = the Laplacian symbol of
:func:`qsmnet.physics.linalg.gradient_kernel`, in 1/mm^2). One FFT pair; the k = 0 mean is left
at zero.
"""

from __future__ import annotations

import torch

from .base import Problem, finish, prepare, safe_reciprocal
from .lam import PILOT_LAMBDA, as_lambda, balanced_lambda, is_auto, lambda_summary
from .registry import register

_REGULARISERS = ("gradient", "identity")
#: identity-regulariser lambda per gradient-regulariser lambda (|grad|^2 ~ 1/mm^2 at mid frequencies).
_IDENTITY_PER_GRADIENT = 1.0


def _filter(p: Problem, lam: torch.Tensor, regulariser: str) -> torch.Tensor:
    d = p.op.kernel
    r2 = p.laplacian() if regulariser == "gradient" else torch.ones_like(d)
    return d * safe_reciprocal(d * d + lam * r2)


def auto_lambda(p: Problem, regulariser: str = "gradient") -> torch.Tensor:
    """Per-sample lambda (B, 1, 1, 1, 1) from the field's noise (see :mod:`qsmnet.solvers.lam`)."""
    chi0 = pilot(p)
    lam = balanced_lambda(p, chi0, "l2")
    return lam if regulariser == "gradient" else lam * _IDENTITY_PER_GRADIENT


def pilot(p: Problem) -> torch.Tensor:
    """Gradient-regularised Tikhonov chi at :data:`~qsmnet.solvers.lam.PILOT_LAMBDA` (unmasked)."""
    return p.op.filter(p.field, _filter(p, as_lambda(PILOT_LAMBDA, p), "gradient"))


@register("tikhonov")
def tikhonov(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    lam: float | str = 0.03,
    regulariser: str = "gradient",
) -> torch.Tensor:
    """Closed-form Tikhonov (CFL2) dipole inversion.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (0), ``residual`` and the ``lambda`` used.
        lam: regularisation weight (mm^2 for the gradient regulariser), or ``"auto"`` for a
            per-sample choice from the field's noise (:mod:`qsmnet.solvers.lam`). Default 0.03,
            the best of {0.003, 0.01, 0.03, 0.1, 0.3} on 8 brain phantoms of
            ``scripts/tune_solvers.py`` (48^3 at 3.5 mm, 2 seeds x noise 0.001/0.003 ppm x
            B0 tilt 0/25 deg): mean nRMSE 52.7 %.
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
