"""A final data-consistency step on a network's answer (``qsmnet predict --dc MU``).

Given the network's chi_net, returns the minimiser of

    ||M (D chi - f)||^2 + mu ||chi - chi_net||^2

(M: the mask, D: the sample's dipole operator with its own voxel size and B0 direction): where the
dipole kernel is large (far from the magic-angle cone) the measured field decides, on the cone the
network's answer is kept; ``mu`` sets the balance (large: the network's answer, small: the field's,
noise and model error included). Solved by conjugate gradients on the normal equations
``(M D^T M D M + mu) chi = M D^T M f + mu chi_net``, warm-started at chi_net.

Measured (``scripts/benchmark_dc.py``) with the first ``unet_head`` weights on benchmark v2's
realistic and pathology heads: mu = 0.3 lowers nRMSE on 7 of 8 heads (mean 66.2 -> 64.0 %; the
haemorrhage head 60.2 -> 54.2 %, whose strong source the network under-fits) and raises it on one
(1x1x2 mm, 73.7 -> 74.3); smaller mu helps the haemorrhage more (0.03: 46.9 %) and the healthy heads
less or not at all, and on 1x1x2 mm training-cache heads every mu below ~1 hurts (0.3: 91.9 -> 94.0 %):
a fixed mu is a compromise.

``mu="auto"`` (:func:`auto_weight`) chooses it per case from the network's own residual
``r = M (D chi_net - f)``. That residual holds two things: model error and noise (background-removal
leftovers, anisotropy, partial volume, spread over the whole brain), and dipolar content the network
failed to explain (localised at strong sources such as a haematoma). The second gives the residual a
heavy tail: its rms rises above its robust level ``s = 1.4826 MAD``. Partial volume in thick slices
gives a heavy tail too, but a fine-grained one, which a Gaussian of :data:`AUTO_SMOOTH_MM` removes,
while an under-fit source's field is smooth over centimetres and keeps it. So:

1. detect: a step only when the smoothed residual's tail ratio ``rms / s`` exceeds :data:`AUTO_DETECT`;
2. weight: the largest weight of :data:`AUTO_MU_GRID` whose answer brings ``rms(r)`` down to
   :data:`AUTO_KAPPA` times the network residual's robust level: a discrepancy principle whose level
   is measured on the case itself, so it follows each geometry's model error instead of fitting it.

Measured with ``--auto``: on 24 training-cache heads the first ``unet_head`` had not seen (volumes
24-47) it steps on the three with a large haemorrhage (0.1 % of the brain above 0.5 ppm; 71.0 / 71.7 /
71.2 -> 64.0 / 64.7 / 63.2 %) and leaves the 21 others unchanged (three hold a small one, 0.03 %, where
no weight gains more than 0.8 points); with the later ``unet_head`` weights on benchmark v2 it steps
on the two haemorrhage heads only (figures in ``qsmnet/weights/unet_head.md``). Healthy 1 mm heads gain
up to 1-2 points from the best fixed step, which the rule gives up to stay off where a step can hurt.
"""

from __future__ import annotations

import torch

from qsmnet.physics import Geometry
from qsmnet.physics.linalg import conjugate_gradient
from qsmnet.solvers.base import prepare

#: CG iteration cap and relative-residual tolerance of the step.
DC_ITERATIONS, DC_TOL = 40, 1e-4
#: ``mu="auto"`` (module docstring): Gaussian width (mm) and tail ratio of the detection; the weights
#: tried, largest (closest to the network) first; the discrepancy factor. Chosen on 24 training-cache
#: heads that the network measured had not seen (``scripts/benchmark_dc.py --auto``): smoothed tail
#: ratios 1.04-1.22 without a haemorrhage, 1.81-1.87 with one; a false detection costs up to 15 points
#: of nRMSE (the 1x1x2 mm head at 1.22), so the threshold keeps a margin.
AUTO_SMOOTH_MM, AUTO_DETECT = 2.0, 1.4
AUTO_MU_GRID = (2.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01)
AUTO_KAPPA = 1.2


def data_consistency(
    chi: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    mu: float | str,
    iterations: int = DC_ITERATIONS,
    tol: float = DC_TOL,
) -> tuple[torch.Tensor, dict]:
    """The data-consistent chi (module docstring) for one sample.

    Args:
        chi: (1, 1, X, Y, Z) or (X, Y, Z) network answer (ppm).
        field, mask: the local field (ppm) and mask, chi's shape.
        geometry: the sample's :class:`Geometry`.
        mu: weight of the network's answer (> 0), or ``"auto"`` (:func:`auto_weight`).
        iterations, tol: CG cap and tolerance.

    Returns:
        (chi of the input's shape, zero outside the mask; ``{"mu", "iterations", "residual_before",
        "residual_after"}`` with residuals ``||M (D chi - f)|| / ||M f||``; with ``"auto"`` also
        ``"auto"`` (:func:`auto_weight`'s record), and ``mu`` None when no step was taken).
    """
    squeeze = chi.dim() == 3
    p = prepare(field, mask, geometry)
    x0 = (chi[None, None] if squeeze else chi).to(p.field) * p.mask
    before = float(p.op.residual(x0, p.field, p.mask)[0])
    if mu == "auto":
        x, its, auto = auto_weight(x0, p, iterations=iterations, tol=tol)
        mu = auto["mu"]
    else:
        mu = float(mu)
        if not mu > 0:
            raise ValueError(f"the data-consistency weight must be > 0 or 'auto', got {mu}")
        x, its = _solve(x0, x0, p, mu, iterations, tol)
        auto = None
    after = float(p.op.residual(x, p.field, p.mask)[0])
    info = {"mu": mu, "iterations": int(its), "residual_before": before, "residual_after": after}
    if auto is not None:
        info["auto"] = auto
    return (x[0, 0] if squeeze else x), info


def _solve(x0, start, p, mu, iterations, tol):
    """CG on the step's normal equations around the network answer ``x0``, from ``start``."""
    m, op = p.mask, p.op

    def normal(v):
        return m * op.A_adjoint(m * op.A(m * v)) + mu * v

    b = m * op.A_adjoint(p.field) + mu * x0
    x, its, _ = conjugate_gradient(normal, b, x0=start, max_iter=iterations, tol=tol)
    return x * m, its


def _levels(r: torch.Tensor, inside: torch.Tensor) -> tuple[float, float]:
    v = r[inside].double()
    return float(v.square().mean().sqrt()), float(1.4826 * (v - v.median()).abs().median())


def residual_levels(x: torch.Tensor, p, smooth_mm: float | None = None) -> tuple[float, float]:
    """(rms, robust level ``1.4826 MAD``) of the residual ``M (D x - f)`` over the mask's voxels
    (ppm), for a prepared problem ``p`` (:func:`qsmnet.solvers.base.prepare`); with ``smooth_mm``,
    of the residual smoothed by a Gaussian of that standard deviation (mm, MONAI's
    ``GaussianFilter``, zero outside the mask before smoothing)."""
    return _residual_levels(p.mask * (p.op.A(x) - p.field), p, smooth_mm)


def _residual_levels(r: torch.Tensor, p, smooth_mm: float | None = None) -> tuple[float, float]:
    """:func:`residual_levels` of an already computed residual map ``r``."""
    if smooth_mm:
        from monai.networks.layers import GaussianFilter

        sigma = [float(smooth_mm) / v for v in p.op.geometry.voxel_size]
        r = GaussianFilter(3, sigma, approx="sampled").to(r)(r)
    return _levels(r, p.mask > 0)


def auto_weight(
    x0: torch.Tensor, p, kappa: float = AUTO_KAPPA, detect: float = AUTO_DETECT,
    smooth_mm: float = AUTO_SMOOTH_MM, grid=AUTO_MU_GRID, iterations: int = DC_ITERATIONS,
    tol: float = DC_TOL,
) -> tuple[torch.Tensor, int, dict]:
    """The automatic data-consistency step (module docstring): none unless the network's smoothed
    residual has a heavy tail, else the largest weight of ``grid`` whose answer meets the target.

    Args:
        x0: (1, 1, X, Y, Z) network answer on ``p``'s grid, zero outside the mask.
        p: the prepared problem (:func:`qsmnet.solvers.base.prepare`).
        kappa: target rms of the residual, in units of the robust level of the network's residual.
        detect: tail ratio (rms / robust level) of the smoothed residual above which a step is taken.
        smooth_mm: standard deviation (mm) of the Gaussian of the detection.
        grid: weights tried in this order (each solve warm-starts from the previous answer).
        iterations, tol: CG cap and tolerance of each solve.

    Returns:
        (answer, CG iterations in all, ``{"mu", "kappa", "detect", "smooth_mm", "tail_smoothed",
        "rms_net", "level_net", "target", "rms_after", "tried"}``): ``mu`` None and the network's
        answer when no step is taken; the smallest weight of the grid when none meets the target.
        Residual levels in ppm.
    """
    r0 = p.mask * (p.op.A(x0) - p.field)  # one forward operator for both statistics
    rms, level = _residual_levels(r0, p)
    rms_s, level_s = _residual_levels(r0, p, smooth_mm)
    tail = rms_s / level_s if level_s > 0 else 0.0
    target = kappa * level
    rec = {"mu": None, "kappa": kappa, "detect": detect, "smooth_mm": smooth_mm, "tail_smoothed": tail,
           "rms_net": rms, "level_net": level, "target": target, "rms_after": rms, "tried": []}  # fmt: skip
    if not (tail > detect and rms > target):
        return x0, 0, rec
    x, total = x0, 0
    for mu in grid:
        x, its = _solve(x0, x, p, float(mu), iterations, tol)
        total += int(its)
        rec["mu"], rec["rms_after"] = float(mu), residual_levels(x, p)[0]
        rec["tried"].append(float(mu))
        if rec["rms_after"] <= target:
            break
    return x, total, rec
