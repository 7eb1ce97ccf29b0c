"""Iterative least squares on the masked normal equations (in the spirit of iLSQR, Li et al. 2015).

    chi = argmin_{chi = M chi} ||M (A chi - f)||^2 + lam ||chi||^2

solved by conjugate gradient on ``(M A M A M + lam) chi = M A M f`` (CGLS), two FFT pairs per
iteration. Without damping (``lam`` a chooser name, the default) the early stop is the
regulariser: CG fits the well-conditioned part of the spectrum first and the cone last, so its
iterates trace a regularisation path (weight ~ 1/k). Run to convergence, CG reaches the masked
least-squares solution, in which noise and model error on the cone are amplified into streaks;
stopped after a handful of iterations (the former ``tol=0.1`` rule stopped at 6 on an in vivo
field) it is a blurred underfit. The chooser (:func:`qsmnet.solvers.select.choose_on_path`)
picks the stop from the path of the first ``iterations`` iterates, then CG is rerun to it (the
cost is two runs of the path).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import select
from .base import Problem, finish, prepare, sub_problem
from .registry import register

#: Multiplier on the frequency-balance weight 1/k of the path (calibrated on the tuning brains).
FREQ_FACTOR = 1.0  # early-stop path: the balance itself (see docs/regularisation.md)


def cg_path(p: Problem, lam: float = 0.0) -> Iterator[tuple[int, torch.Tensor, float]]:
    """CG iterates ``(k, chi_k, relative normal-equation residual)`` for k = 1, 2, ... (endless)."""
    m, op = p.mask, p.op

    def normal(x):
        y = m * op.A_adjoint(m * op.A(m * x))
        return y + lam * x if lam else y

    def dot(u, v):
        return (u * v).flatten(1).sum(1).view(-1, 1, 1, 1, 1)

    b = m * op.A_adjoint(p.field)
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = dot(r, r)
    bnorm = rr.sqrt().clamp_min(1e-30)
    k = 0
    while True:
        k += 1
        ad = normal(d)
        alpha = rr / dot(d, ad).clamp_min(1e-30)
        x = x + alpha * d
        r = r - alpha * ad
        rr_new = dot(r, r)
        d = r + (rr_new / rr.clamp_min(1e-30)) * d
        rr = rr_new
        yield k, x, float((rr.sqrt() / bnorm).max())


@register("ilsqr")
def ilsqr(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    lam: float | str = "auto",
    tol: float = 0.01,
    iterations: int = 60,
) -> torch.Tensor:
    """Masked least squares by conjugate gradient, regularised by its stopping iteration.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (the stop), ``residual``, ``cg_residual``, ``lambda``
            (the damping, 0 for a chosen stop), ``lambda_method`` and ``lambda_sweep`` (the
            path, weight 1/k).
        lam: ``"auto"`` (default), ``"lcurve"`` or ``"freq"``: no damping, the stop chosen from
            the path (:mod:`qsmnet.solvers.select`); or a damping weight (>= 0): CG runs to
            ``tol`` or ``iterations`` (0: the former undamped, tolerance-stopped solver).
        tol: normal-equation residual at which a damped solve stops (default 0.01).
        iterations: length of the path the chooser looks at / iteration cap (default 60).

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    method = "fixed" if not isinstance(lam, str) and float(lam) == 0 else select.resolve(lam, path=True)
    chis, stops, rels, sweeps = [], [], [], []
    for b in range(p.field.shape[0]):
        q = sub_problem(p, b)
        if method == "fixed":
            for k, x, rel in cg_path(q, float(lam)):  # noqa: B007 - the last iterate is kept
                if rel < tol or k >= iterations:
                    break
        else:
            stop, rec = select.choose_on_path(
                q, ((k, x) for k, x, _ in cg_path(q)), int(iterations), method, FREQ_FACTOR
            )
            sweeps.append(rec)
            for k, x, rel in cg_path(q):  # noqa: B007 - the last iterate is kept
                if k >= stop:
                    break
        chis.append(x)
        stops.append(k)
        rels.append(rel)
    select.report(
        info, float(lam) if method == "fixed" else 0.0, method, sweeps[0] if len(sweeps) == 1 else None
    )
    return finish(p, torch.cat(chis), info, max(stops), cg_residual=max(rels))
