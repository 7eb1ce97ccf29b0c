"""A final data-consistency step on a network's answer (``qsmnet predict --dc MU``).

Given the network's chi_net, returns the minimiser of

    ||M (D chi - f)||^2 + mu ||chi - chi_net||^2

(M: the mask, D: the sample's dipole operator with its own voxel size and B0 direction): where the
dipole kernel is large (far from the magic-angle cone) the measured field decides, on the cone the
network's answer is kept; ``mu`` sets the balance (large: the network's answer, small: the field's,
noise and model error included). Solved by conjugate gradients on the normal equations
``(M D^T M D M + mu) chi = M D^T M f + mu chi_net``, warm-started at chi_net.

Measured (``scripts/benchmark_dc.py``, ``unet_head`` on benchmark v2's realistic and pathology
heads): mu = 0.3 lowers nRMSE on 7 of 8 heads (mean 66.2 -> 64.0 %; the haemorrhage head 60.2 ->
54.2 %, whose strong source the network under-fits) and raises it on one (1x1x2 mm, 73.7 -> 74.3);
smaller mu helps the haemorrhage more (0.03: 46.9 %) and the healthy heads less or not at all. The
weight is not chosen automatically yet.
"""

from __future__ import annotations

import torch

from qsmnet.physics import Geometry
from qsmnet.physics.linalg import conjugate_gradient
from qsmnet.solvers.base import prepare

#: CG iteration cap and relative-residual tolerance of the step.
DC_ITERATIONS, DC_TOL = 40, 1e-4


def data_consistency(
    chi: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    mu: float,
    iterations: int = DC_ITERATIONS,
    tol: float = DC_TOL,
) -> tuple[torch.Tensor, dict]:
    """The data-consistent chi (module docstring) for one sample.

    Args:
        chi: (1, 1, X, Y, Z) or (X, Y, Z) network answer (ppm).
        field, mask: the local field (ppm) and mask, chi's shape.
        geometry: the sample's :class:`Geometry`.
        mu: weight of the network's answer (> 0).
        iterations, tol: CG cap and tolerance.

    Returns:
        (chi of the input's shape, zero outside the mask; ``{"mu", "iterations", "residual_before",
        "residual_after"}`` with residuals ``||M (D chi - f)|| / ||M f||``).
    """
    mu = float(mu)
    if not mu > 0:
        raise ValueError(f"the data-consistency weight must be > 0, got {mu}")
    squeeze = chi.dim() == 3
    p = prepare(field, mask, geometry)
    m, op = p.mask, p.op
    x0 = (chi[None, None] if squeeze else chi).to(p.field) * m
    before = float(op.residual(x0, p.field, m)[0])

    def normal(v):
        return m * op.A_adjoint(m * op.A(m * v)) + mu * v

    b = m * op.A_adjoint(p.field) + mu * x0
    x, its, _ = conjugate_gradient(normal, b, x0=x0, max_iter=iterations, tol=tol)
    x = x * m
    after = float(op.residual(x, p.field, m)[0])
    info = {"mu": mu, "iterations": int(its), "residual_before": before, "residual_after": after}
    return (x[0, 0] if squeeze else x), info
