"""Nonlinear dipole inversion (NDI, Polak et al. 2020): gradient descent on the complex data term.

    chi = argmin 1/(2 s^2) ||W (exp(i s A chi) - exp(i s f))||^2 + lam/2 ||chi||^2

with ``s`` (rad/ppm) the phase accrued per ppm at the echo time, so ``s f`` is the phase. The
gradient is ``(1/s) A^T [W^2 sin(s (A chi - f))] + lam chi``: the complex exponential makes the
data term robust to wrapped or noisy phase, and for small ``s (A chi - f)`` it reduces to least
squares. Early stopping regularises (as in the paper); two FFT pairs per iteration.
"""

from __future__ import annotations

import torch

from qsmnet.physics import ppm_to_rad

from .base import finish, prepare
from .registry import register

#: Phase per ppm of a typical 3 T gradient echo (TE = 20 ms), used when ``phase_scale`` is None.
DEFAULT_PHASE_SCALE = float(ppm_to_rad(1.0, te=0.02, b0=3.0))


@register("ndi")
def ndi(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    magnitude=None,
    iterations: int = 100,
    step: float = 2.0,
    lam: float = 1e-6,
    tol: float = 1e-3,
    phase_scale: float | None = None,
) -> torch.Tensor:
    """Nonlinear dipole inversion by gradient descent.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations``, ``residual`` and ``phase_scale``.
        magnitude: optional magnitude (data weight W = mask x magnitude / max); else W = mask.
        iterations: iteration cap (default 100, the paper's early stop; the sweep in
            ``scripts/tune_solvers.py`` is still to be run).
        step: gradient step (default 2, Polak et al.; W <= 1 and |D| <= 2/3 keep it stable).
        lam: Tikhonov weight (default 1e-6, Polak et al.).
        tol: stop when the relative chi update is below this (default 1e-3).
        phase_scale: rad per ppm (``ppm_to_rad(1, te, b0)``); None uses 3 T, TE 20 ms.

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    s = DEFAULT_PHASE_SCALE if phase_scale is None else float(phase_scale)
    if not s > 0:
        raise ValueError(f"phase_scale must be positive, got {s}")
    w2 = p.mask
    if magnitude is not None:
        mag = torch.as_tensor(magnitude, device=p.device, dtype=torch.float32)
        mag = (mag[None, None] if mag.dim() == 3 else mag).expand_as(p.field) * p.mask
        mag = mag / mag.flatten(1).amax(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1, 1)
        w2 = mag * mag
    chi = torch.zeros_like(p.field)
    it = 0
    for it in range(1, int(iterations) + 1):  # noqa: B007 - `it` is reported
        r = torch.sin(s * (p.op.A(chi) - p.field)).mul_(w2 / s)
        upd = p.op.A_adjoint(r).add_(chi, alpha=lam).mul_(step)
        chi = chi - upd
        delta = upd.flatten(1).norm(dim=1) / chi.flatten(1).norm(dim=1).clamp_min(1e-30)
        if float(delta.max()) < tol:
            break
    return finish(p, chi, info, it, phase_scale=s)
