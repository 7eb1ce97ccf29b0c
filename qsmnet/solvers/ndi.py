"""Nonlinear dipole inversion (NDI, Polak et al. 2020): gradient descent on the complex data term.

    chi = argmin 1/(2 s^2) ||W (exp(i s A chi) - exp(i s f))||^2 + lam/2 ||chi||^2

with ``s`` (rad/ppm) the phase accrued per ppm at the echo time, so ``s f`` is the phase. The
gradient is ``(1/s) A^T [W^2 sin(s (A chi - f))] + lam chi``: the complex exponential makes the
data term robust to wrapped or noisy phase, and for small ``s (A chi - f)`` it reduces to damped
least squares, the problem of :mod:`.ilsqr` with data weight W^2. Two FFT pairs per iteration.

**Run to convergence**: the descent stops when the relative chi update ``||step grad|| / ||chi||``
is below ``tol`` (1e-4); it converges to a stationary point of the damped objective above (for
phases well below pi, its unique minimiser). The slowest mode (the cone) contracts by
``1 - step lam`` per iteration, so with the default weights (lam ~ 0.05-0.5) this takes tens to a
few hundred iterations; the cap (``iterations``, 1000) is not reached in practice for lam >= 3e-3.
The former solver (Tikhonov 1e-6, the early stop as regulariser) stopped after 2-4 iterations on
realistic brains.

**Start**: the descent starts from the damped masked least-squares solution at the same weight
(:func:`.ilsqr.cg_solve`, the objective's small-phase limit with W = M), not from zero. The field
given to a solver is an unwrapped local field, and near a strong source (a haemorrhage: |s f| of
several rad at 3 T, TE 20 ms) the sine of the zero start's residual has the wrong sign, so the
descent from zero settles at a wrong stationary point (v2 haemorrhage heads: 91 % nRMSE against
iLSQR's 54 %). From the least-squares start the residual phase is the model error's, well below pi,
and the descent refines within that basin. ``start="zero"`` keeps Polak et al.'s start.

``lam="auto"`` (= ``"model"``) starts from the damping rule of :func:`.ilsqr.auto_damping` (noise
balance x model-error factor) and **matches the misfit** (:func:`match_misfit`): the linear misfit
``||M (A chi - f)|| / ||M f||`` that iLSQR leaves at that weight is the rule's estimate of what the
field holds beyond the dipole model, and NDI should leave no more. Where the descent stays in the
linear regime (healthy 1 mm heads: NDI's misfit 1.00-1.04x its start's) nothing changes. Near a
haematoma the damping shrinks the source, the residual phase grows, the sine's pull weakens and the
descent lets the source go further: NDI's misfit reached up to 1.85x its start's there, and its nRMSE
up to 17 % above its best damping. There the damping is lowered (at most :data:`MATCH_SOLVES` more
solves) until NDI's misfit matches iLSQR's at the rule's weight (docs/regularisation.md, session 29).
Only on near-isotropic voxels (:data:`MATCH_MAX_ANISOTROPY`) and where the field shows model error
(``rho > RHO0``, as for iLSQR's floor): with 2 mm slices healthy heads show the same misfit excess
as haematoma heads, and on white noise the rule is the noise balance, which the clean benchmark keeps.
``"noise"`` and a number run one descent at that weight; ``"lcurve"`` / ``"freq"`` a warm-started
sweep over the weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial

import torch

from qsmnet.physics import ppm_to_rad

from . import select
from .base import Problem, finish, prepare, relative_residual, sub_problem
from .ilsqr import DAMP_FLOOR, SWEEP, auto_damping, cg_solve, damping_sweep
from .registry import register

#: Phase per ppm of a typical 3 T gradient echo (TE = 20 ms), used when ``phase_scale`` is None.
DEFAULT_PHASE_SCALE = float(ppm_to_rad(1.0, te=0.02, b0=3.0))
#: Largest |D| (the kernel's 2/3) and the stability bound of the step: step (4/9 + lam) < 2.
_D2_MAX = 4.0 / 9.0
#: ``lam="auto"``: the damping is lowered where NDI's misfit exceeds its target (iLSQR's misfit at the
#: rule's weight) by more than this factor, on near-isotropic voxels (largest / smallest side at most
#: :data:`MATCH_MAX_ANISOTROPY`) with model error (``rho > RHO0``). Near-isotropic heads measured:
#: haematoma 1.04-1.85 (9 of 10 above 1.1), healthy 1.00-1.04. At 2 mm slices healthy heads read
#: 1.04-1.28, as high as the haematoma heads there (1.10-1.28), and stepping there cost up to 5.2 %
#: (docs/regularisation.md, session 29), so the match is not used there.
MISFIT_EXCESS = 1.1
MATCH_MAX_ANISOTROPY = 1.5
#: Extra solves the misfit match may take (each an iLSQR start and a descent), and the lowest damping
#: it may reach, as a fraction of the rule's; never below iLSQR's floor :data:`.ilsqr.DAMP_FLOOR`, the
#: lowest best damping measured on realistic heads (0.0095): below it a 2.4 mm-slice haematoma head
#: whose rule sits at the floor lost 10 % (docs/regularisation.md, session 29).
MATCH_SOLVES = 2
MATCH_LOWEST = 0.125
#: NDI's misfit grows about as damping ** 0.5 near the rule's weight on the haematoma heads measured
#: (0.3-0.65); the match's first step assumes it, later steps use the measured slope (secant).
MATCH_SLOPE = 0.5


def descent_path(
    p: Problem, w2: torch.Tensor, s: float, step: float, tikhonov: float, chi0: torch.Tensor | None = None
) -> Iterator:
    """Gradient-descent iterates ``(k, chi_k, relative update)`` for k = 1, 2, ... (endless)."""
    chi = torch.zeros_like(p.field) if chi0 is None else chi0.clone()
    k = 0
    while True:
        k += 1
        r = torch.sin(s * (p.op.A(chi) - p.field)).mul_(w2 / s)
        upd = p.op.A_adjoint(r).add_(chi, alpha=tikhonov).mul_(step)
        chi = chi - upd
        delta = upd.flatten(1).norm(dim=1) / chi.flatten(1).norm(dim=1).clamp_min(1e-30)
        yield k, chi, float(delta.max())


def descend(p, w2, s, step, lam, tol, iterations, chi0=None) -> tuple[torch.Tensor, int, float]:
    """Descent to a relative update below ``tol`` (or the cap): (chi, iterations, last update)."""
    step = min(step, 1.9 / (_D2_MAX + lam))  # stable for any weight
    for k, chi, delta in descent_path(p, w2, s, step, lam, chi0):  # noqa: B007 - the last iterate is kept
        if delta < tol or k >= iterations:
            return chi, k, delta
    raise AssertionError("unreachable")


def match_misfit(solve, w0: float, target: float, first: tuple) -> tuple[float, tuple, list]:
    """Lower the damping from ``w0`` until NDI's misfit matches ``target`` (log-log secant steps).

    ``solve(w) -> (misfit, result)``; ``first`` = ``(misfit, result)`` at ``w0``. Stops within 5 % of
    the target or after :data:`MATCH_SOLVES` solves, the damping kept in
    [max(:data:`MATCH_LOWEST` x ``w0``, :data:`.ilsqr.DAMP_FLOOR`), ``w0``]. Returns
    ``(damping, result, path)``: the largest damping tried whose misfit is at most 1.05x the target
    (else the one with the smallest misfit), its result, and the ``[damping, misfit]`` pairs tried.
    """
    tried = [(w0, *first)]
    lowest = min(w0, max(MATCH_LOWEST * w0, DAMP_FLOOR))
    slope = MATCH_SLOPE
    for _ in range(MATCH_SOLVES):
        w_prev, m_prev = tried[-1][0], tried[-1][1]
        w = min(max(w_prev * (target / m_prev) ** (1.0 / slope), lowest), w0)
        if abs(math.log(w / w_prev)) < math.log(1.1):
            break  # a step under 10 % (or clamped at the floor) is not worth a solve
        tried.append((w, *solve(w)))
        if abs(math.log(tried[-1][1] / target)) < math.log(1.05):
            break
        slope = (math.log(tried[-1][1]) - math.log(m_prev)) / (math.log(w) - math.log(w_prev))
        slope = min(max(slope, 0.2), 1.0)  # a noisy or flat pair: keep the step bounded
    # the largest damping that meets the target (within 5 %), else the smallest misfit: a haematoma can
    # make the misfit jump with the damping (the descent lets the source go), so no interpolation
    met = [t for t in tried if t[1] <= 1.05 * target]
    w, _, result = max(met, key=lambda t: t[0]) if met else min(tried, key=lambda t: t[1])
    return w, result, [[t[0], t[1]] for t in tried]


def _auto_match(q: Problem, w: float, x0, first: tuple, x0_is_lsq: bool, solve) -> tuple[float, tuple, dict]:
    """``lam="auto"``'s misfit match on one sample: ``(damping, (chi, iterations, update), record)``.

    ``first`` is the descent at the rule's damping ``w`` from ``x0``; ``solve(v)`` a full solve at
    ``v``. The target is the least-squares solution's misfit at ``w`` (``x0`` when it is that
    start). The record is ``{"target", "path"}``, the ``[damping, misfit]`` pairs tried.
    """

    def scored(out):  # (misfit of the masked chi, the descent's result): chi is masked on return
        return relative_residual(q, out[0] * q.mask), out

    target = relative_residual(q, x0 if x0_is_lsq else cg_solve(q, w)[0])
    misfit, _ = scored(first)
    path = [[w, misfit]]
    vs = q.geometries[0].voxel_size
    # only on near-isotropic voxels under model error (like iLSQR's floor): elsewhere the ratio does
    # not single out a haematoma (2 mm slices: healthy heads up to 1.28; the clean benchmark's white
    # noise: 1.2-3.6 at small dampings, no haematoma). The cone power (an FFT) is read last, only
    # where the match would step.
    if (misfit > MISFIT_EXCESS * target and max(vs) <= MATCH_MAX_ANISOTROPY * min(vs)
            and select.cone_power(q) > select.RHO0):  # fmt: skip
        w, first, path = match_misfit(lambda v: scored(solve(v)), w, target, (misfit, first))
    return w, first, dict(target=target, path=path)


@register("ndi")
def ndi(
    field,
    mask,
    geometry,
    *,
    info: dict | None = None,
    magnitude=None,
    lam: float | str = "auto",
    iterations: int = 1000,
    step: float = 2.0,
    tol: float = 1e-4,
    phase_scale: float | None = None,
    start: str = "lsq",
) -> torch.Tensor:
    """Nonlinear dipole inversion with Tikhonov damping, run to convergence.

    Args:
        field: (X, Y, Z) or (B, 1, X, Y, Z) local field (ppm).
        mask: same shape, non-zero inside the brain.
        geometry: :class:`~qsmnet.physics.Geometry` (or one per sample).
        info: filled with ``iterations`` (of the final descent), ``residual``, ``update`` (the
            last relative update), ``phase_scale``, ``lambda`` (the Tikhonov weight),
            ``lambda_method`` and, after a sweep, ``lambda_sweep``.
        magnitude: optional magnitude (data weight W = mask x magnitude / max); else W = mask.
        lam: Tikhonov weight (> 0) or a chooser: ``"auto"`` (default, = ``"model"``: iLSQR's
            damping rule, lowered where NDI's misfit exceeds iLSQR's, :func:`match_misfit`; then
            ``info["misfit_match"]`` holds the target and the ``[damping, misfit]`` pairs tried),
            ``"noise"``, ``"lcurve"``, ``"freq"`` (:mod:`qsmnet.solvers.select`).
        iterations: iteration cap (default 1000; not reached for lam >= 3e-3).
        step: gradient step (default 2, Polak et al.; lowered to 1.9 / (4/9 + lam) if larger).
        tol: stop when the relative chi update is below this (default 1e-4).
        phase_scale: rad per ppm (``ppm_to_rad(1, te, b0)``); None uses 3 T, TE 20 ms.
        start: ``"lsq"`` (default): descend from the damped masked least-squares solution at the
            chosen weight (iLSQR's CG and stopping rule, some tens of FFT pairs); ``"zero"``: from
            zero (Polak et al.).

    Returns:
        chi (ppm), the field's shape, zero outside the mask.
    """
    p = prepare(field, mask, geometry)
    s = DEFAULT_PHASE_SCALE if phase_scale is None else float(phase_scale)
    if not s > 0:
        raise ValueError(f"phase_scale must be positive, got {s}")
    if start not in ("lsq", "zero"):
        raise ValueError(f"start must be 'lsq' or 'zero', got {start!r}")
    method = select.resolve(lam)

    def begin(q, w, x):  # the descent's start: a given state, else per ``start``
        return x if x is not None or start == "zero" else cg_solve(q, w)[0]

    def descend_from(q, wb, v):  # a full solve at damping v, from its own start
        return descend(q, wb, s, step, v, tol, iterations, begin(q, v, None))

    w2 = p.mask
    if magnitude is not None:
        mag = torch.as_tensor(magnitude, device=p.device, dtype=torch.float32)
        mag = (mag[None, None] if mag.dim() == 3 else mag).expand_as(p.field) * p.mask
        mag = mag / mag.flatten(1).amax(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1, 1)
        w2 = mag * mag
    chis, stops, deltas, lams, sweeps, matches = [], [], [], [], [], []
    for b in range(p.field.shape[0]):
        q, wb = sub_problem(p, b), w2[b : b + 1]
        chi0 = None
        if method == "fixed":
            w = float(lam)
        elif method in ("noise", "model"):
            w = auto_damping(q, method)
        else:  # a sweep's states are descents warm-started from the previous weight's answer
            rec = damping_sweep(
                q, lambda v, x, q=q, wb=wb: descend(q, wb, s, step, v, tol, iterations, begin(q, v, x))[0],
                SWEEP,
            )
            w = select.choose(rec, method)
            chi0 = select.nearest_state(rec, w)["chi"]
            sweeps.append(rec)
        x0 = begin(q, w, chi0)
        chi, k, delta = descend(q, wb, s, step, w, tol, iterations, x0)
        if method == "model":  # the misfit match: NDI leaves no more misfit than iLSQR at the rule's weight
            solve = partial(descend_from, q, wb)
            w, (chi, k, delta), record = _auto_match(q, w, x0, (chi, k, delta), start == "lsq", solve)
            matches.append(record)
        chis.append(chi)
        stops.append(k)
        deltas.append(delta)
        lams.append(w)
    extra = {"misfit_match": matches[0] if len(matches) == 1 else matches} if matches else {}
    lam_out = lams[0] if len(lams) == 1 else lams
    select.report(info, lam_out, method, sweeps[0] if len(sweeps) == 1 else None, **extra)
    return finish(p, torch.cat(chis), info, max(stops), phase_scale=s, update=max(deltas))
