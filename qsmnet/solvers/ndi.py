"""Nonlinear dipole inversion (NDI, Polak et al. 2020): gradient descent on the complex data term.

    chi = argmin 1/(2 s^2) ||W (exp(i s A chi) - exp(i s f))||^2 + lam/2 ||chi||^2

with ``s`` (rad/ppm) the phase accrued per ppm at the echo time, so ``s f`` is the phase. The
gradient is ``(1/s) A^T [W^2 sin(s (A chi - f))] + lam chi``: the complex exponential makes the
data term robust to wrapped or noisy phase, and for small ``s (A chi - f)`` it reduces to least
squares. Two FFT pairs per iteration.

Early stopping regularises (as in the paper): run to convergence, the small Tikhonov weight
barely damps the cone and the iterates drift into streaks (noise and model error amplified);
stopped early, they are smooth underfits. With ``lam="auto"`` (default), ``"lcurve"`` or
``"freq"`` the stop is chosen from the path of the first ``iterations`` iterates
(:func:`qsmnet.solvers.select.choose_on_path`) and the descent rerun to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from qsmnet.physics import ppm_to_rad

from . import select
from .base import Problem, finish, prepare, sub_problem
from .registry import register

#: Multiplier on the frequency-balance weight 1/k of the path (calibrated on the tuning brains).
FREQ_FACTOR = 1.0  # early-stop path: the balance itself (see docs/regularisation.md)

#: Phase per ppm of a typical 3 T gradient echo (TE = 20 ms), used when ``phase_scale`` is None.
DEFAULT_PHASE_SCALE = float(ppm_to_rad(1.0, te=0.02, b0=3.0))


def descent_path(p: Problem, w2: torch.Tensor, s: float, step: float, tikhonov: float) -> Iterator:
    """Gradient-descent iterates ``(k, chi_k, relative update)`` for k = 1, 2, ... (endless)."""
    chi = torch.zeros_like(p.field)
    k = 0
    while True:
        k += 1
        r = torch.sin(s * (p.op.A(chi) - p.field)).mul_(w2 / s)
        upd = p.op.A_adjoint(r).add_(chi, alpha=tikhonov).mul_(step)
        chi = chi - upd
        delta = upd.flatten(1).norm(dim=1) / chi.flatten(1).norm(dim=1).clamp_min(1e-30)
        yield k, chi, float(delta.max())


@register("ndi")
def ndi(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    magnitude=None,
    lam: float | str = "auto",
    iterations: int = 200,
    step: float = 2.0,
    tikhonov: float = 1e-6,
    tol: float = 1e-3,
    phase_scale: float | None = None,
) -> torch.Tensor:
    """Nonlinear dipole inversion by gradient descent, regularised by its stopping iteration.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (the stop), ``residual``, ``phase_scale``, ``lambda``
            (the Tikhonov weight), ``lambda_method`` and ``lambda_sweep`` (the path, weight 1/k).
        magnitude: optional magnitude (data weight W = mask x magnitude / max); else W = mask.
        lam: ``"auto"`` (default), ``"lcurve"`` or ``"freq"``: the stop chosen from the path of
            the first ``iterations`` iterates; or a Tikhonov weight (> 0) used instead of
            ``tikhonov``, the descent then running to ``tol`` or ``iterations``.
        iterations: path length / iteration cap (default 200).
        step: gradient step (default 2, Polak et al.; W <= 1 and |D| <= 2/3 keep it stable).
        tikhonov: Tikhonov weight while a chooser picks the stop (default 1e-6, Polak et al.).
        tol: stop a fixed-weight descent when the relative chi update is below this (default 1e-3).
        phase_scale: rad per ppm (``ppm_to_rad(1, te, b0)``); None uses 3 T, TE 20 ms.

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    s = DEFAULT_PHASE_SCALE if phase_scale is None else float(phase_scale)
    if not s > 0:
        raise ValueError(f"phase_scale must be positive, got {s}")
    method = select.resolve(lam, path=True)
    w2 = p.mask
    if magnitude is not None:
        mag = torch.as_tensor(magnitude, device=p.device, dtype=torch.float32)
        mag = (mag[None, None] if mag.dim() == 3 else mag).expand_as(p.field) * p.mask
        mag = mag / mag.flatten(1).amax(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1, 1)
        w2 = mag * mag
    weight = float(lam) if method == "fixed" else float(tikhonov)
    chis, stops, sweeps = [], [], []
    for b in range(p.field.shape[0]):
        q, wb = sub_problem(p, b), w2[b : b + 1]
        if method == "fixed":
            for k, chi, delta in descent_path(q, wb, s, step, weight):  # noqa: B007 - the last iterate is kept
                if delta < tol or k >= iterations:
                    break
        else:
            path = ((k, x) for k, x, _ in descent_path(q, wb, s, step, weight))
            stop, rec = select.choose_on_path(q, path, int(iterations), method, FREQ_FACTOR)
            sweeps.append(rec)
            for k, chi, _ in descent_path(q, wb, s, step, weight):  # noqa: B007 - the last iterate is kept
                if k >= stop:
                    break
        chis.append(chi)
        stops.append(k)
    select.report(info, weight, method, sweeps[0] if len(sweeps) == 1 else None)
    return finish(p, torch.cat(chis), info, max(stops), phase_scale=s)
