"""Damped least squares on the masked normal equations (in the spirit of iLSQR, Li et al. 2015).

    chi = argmin_{chi = M chi} ||M (A chi - f)||^2 + lam ||chi||^2

solved by conjugate gradient on ``(M A M A M + lam) chi = M A M f`` (CGLS), two FFT pairs per
iteration, **run to convergence**: it stops when the relative normal-equation residual
``||(MAMAM + lam) chi - MAMf|| / ||MAMf||`` is below ``tol`` (1e-3). What it converges to is the
damped (identity-Tikhonov) masked least-squares solution, i.e. the weight ``lam`` is the
regulariser, not the stopping iteration. With ``lam`` > 0 the system is positive definite with
condition number <= (4/9 + lam) / lam, so CG needs some tens of iterations; the cap
(``iterations``, 500) is not reached in practice for lam >= 1e-3.

The former solver (undamped, the early stop chosen from the iterate path) stopped after 2-4
iterations on realistic brains: a blurred underfit, and any longer run amplified noise and model
error on the magic-angle cone into streaks.

``lam="auto"`` (= ``"model"``) is the damping analogue of Tikhonov's rule: the white-noise balance
of :mod:`.lam` times the model-error factor :func:`~qsmnet.solvers.select.model_error_factor`,
times :data:`DAMP_FACTOR`, at least :data:`DAMP_FLOOR` under model error. ``"lcurve"`` /
``"freq"`` run a warm-started sweep over the damping (:data:`SWEEP`) and pick from it. NDI
(:mod:`.ndi`) uses the same weight.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from . import select
from .base import Problem, finish, prepare, sub_problem
from .registry import register

#: Multiplier on (noise balance x model-error factor) for the identity damping (see
#: docs/regularisation.md: calibrated on the tuning brains, seeds 0-2).
DAMP_FACTOR = 1.0
#: Floor of the ``"model"`` damping where the field carries model error (``rho > RHO0``). The damping
#: is dimensionless; its per-case best on every realistic case measured lies in 0.0095-0.053
#: (160^3 brains 0.053, v2 heads 0.0095-0.053, docs/regularisation.md). A strong haemorrhage dilutes
#: ``rho`` to ~RHO0 so the rule fell 5x short there (0.0019 vs 0.0095, +11.5 % nRMSE).
DAMP_FLOOR = 1e-2
#: The damping sweep for ``"lcurve"`` / ``"freq"``: lam 3e-3 .. 1, 10 weights, warm-started.
SWEEP = (3e-3, 1.0, 10)


def cg_path(
    p: Problem, lam: float = 0.0, x0: torch.Tensor | None = None
) -> Iterator[tuple[int, torch.Tensor, float]]:
    """CG iterates ``(k, chi_k, relative normal-equation residual)`` for k = 1, 2, ... (endless).

    ``x0``: warm start (default zeros); the residual is relative to ``||M A M f||`` either way.
    """
    m, op = p.mask, p.op

    def normal(x):
        y = m * op.A_adjoint(m * op.A(m * x))
        return y + lam * x if lam else y

    def dot(u, v):
        return (u * v).flatten(1).sum(1).view(-1, 1, 1, 1, 1)

    b = m * op.A_adjoint(p.field)
    bnorm = dot(b, b).sqrt().clamp_min(1e-30)
    x = torch.zeros_like(b) if x0 is None else x0 * m
    r = b - normal(x) if x0 is not None else b.clone()
    d = r.clone()
    rr = dot(r, r)
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


TOL = 1e-3  # iLSQR's default CG stopping tolerance (relative normal-equation residual)
ITERATIONS = 500  # and its iteration cap


def cg_solve(
    p: Problem, lam: float, tol: float = TOL, iterations: int = ITERATIONS, x0=None
) -> tuple[torch.Tensor, int, float]:
    """Damped CG run to ``tol`` (or the cap): (chi, iterations, relative residual)."""
    for k, x, rel in cg_path(p, lam, x0):  # noqa: B007 - the last iterate is kept
        if rel < tol or k >= iterations:
            return x, k, rel
    raise AssertionError("unreachable")


def auto_damping(p: Problem, method: str) -> float:
    """The ``"noise"`` / ``"model"`` damping of sample 0 of ``p`` (batch of one).

    Noise balance: Tikhonov's identity-regulariser rule (:func:`.tikhonov.auto_lambda`);
    ``"model"`` multiplies it by the model-error factor and :data:`DAMP_FACTOR`, and under model
    error (``rho > RHO0``) keeps it at least :data:`DAMP_FLOOR`.
    """
    from .tikhonov import auto_lambda

    lam = float(auto_lambda(p, "identity").flatten()[0])
    if method != "model":
        return lam
    return select.bounded_model_weight(p, lam * DAMP_FACTOR, floor=DAMP_FLOOR)


def damping_sweep(p: Problem, solve, grid=SWEEP) -> select.Sweep:
    """Warm-started sweep over the damping; ``solve(lam, x0) -> chi`` (batch of one)."""

    def step(lam, state):
        chi = solve(lam, state.get("chi"))
        state["chi"] = chi
        x = chi * p.mask
        return chi, float(x.square().sum())

    return select.run_sweep(p, step, select.log_grid(*grid))


@register("ilsqr")
def ilsqr(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    lam: float | str = "auto",
    tol: float = TOL,
    iterations: int = ITERATIONS,
) -> torch.Tensor:
    """Damped masked least squares by conjugate gradient, run to a residual tolerance.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (of the final solve), ``residual``, ``cg_residual``
            (relative normal-equation residual reached), ``lambda`` (the damping),
            ``lambda_method`` and, after a sweep, ``lambda_sweep``.
        lam: the damping (>= 0; 0 is the undamped solver, which amplifies the cone) or a chooser:
            ``"auto"`` (default, = ``"model"``), ``"noise"``, ``"lcurve"``, ``"freq"``.
        tol: relative normal-equation residual at which CG stops (default 1e-3).
        iterations: iteration cap (default 500; not reached for lam >= 1e-3).

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    method = "fixed" if not isinstance(lam, str) and float(lam) == 0 else select.resolve(lam)
    chis, stops, rels, lams, sweeps = [], [], [], [], []
    for b in range(p.field.shape[0]):
        q = sub_problem(p, b)
        x0 = None
        if method == "fixed":
            w = float(lam)
        elif method in ("noise", "model"):
            w = auto_damping(q, method)
        else:
            rec = damping_sweep(q, lambda v, x, q=q: cg_solve(q, v, tol, iterations, x)[0])
            w = select.choose(rec, method)
            x0 = select.nearest_state(rec, w)["chi"]
            sweeps.append(rec)
        x, k, rel = cg_solve(q, w, tol, iterations, x0)
        chis.append(x)
        stops.append(k)
        rels.append(rel)
        lams.append(w)
    lam_out = lams[0] if len(lams) == 1 else lams
    select.report(info, lam_out, method, sweeps[0] if len(sweeps) == 1 else None)
    return finish(p, torch.cat(chis), info, max(stops), cg_residual=max(rels))
