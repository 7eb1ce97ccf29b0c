"""Out-of-domain guard for network predictions, and a TV fallback.

Networks trained on simulated brains can fail quietly on real fields: they amplify non-dipolar
content and streaks (issue 17: on a real 3 T field the shipped networks' outputs have 1.4-1.7x the
reference's spread and lose to TKD). :func:`assess` measures a prediction against the closed-form
Tikhonov solution of the same field, which needs no training data and so shares no failure with the
network:

- ``residual``: ``||M (D chi - f)|| / ||M f||`` of the prediction, and ``residual_ratio``, that over
  the closed form's residual;
- ``std_ratio``: std of chi in the mask over that of the closed form (amplification);
- ``std_field``: std of chi in the mask over the field's (ppm / ppm);
- ``cone_fraction``: fraction of the masked chi's spectral energy where ``|D(k)| < 0.1`` (near the
  dipole cone, where the data say nothing: streaks live there), and ``cone_ratio``, that over the
  closed form's;
- ``correlation``: Pearson correlation with the closed form in the mask.

Each is checked against :data:`DEFAULT_LIMITS` (calibrated on the project's simulated benchmark
cases, where the shipped networks are in domain; override with a ``"guard"`` dict in a weights'
JSON). :class:`GuardedMethod` wraps a network method: on every call it adds the verdict to
``info["guard"]`` and, with a fallback, returns the fallback solver's answer when the guard flags.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch

from qsmnet.physics import DipoleOperator, Geometry, dipole_kernel

log = logging.getLogger(__name__)

#: |D(k)| below which a frequency counts as near the dipole cone.
CONE_THRESHOLD = 0.1
#: Closed-form reference: Tikhonov at its cone-power rule (``lam="model"``), the default weight when the
#: limits below were calibrated (session 27 moved Tikhonov's default to the Wiener balance; the guard
#: keeps the weight its limits were set with).
REFERENCE_SOLVER = "tikhonov"
REFERENCE_PARAMS = {"lam": "model"}
#: Accepted ranges (lo, hi) of each statistic; None leaves a side open. Calibrated with the shipped
#: networks (1 flip) on two benchmark cases (brain1 axial 1 mm high noise, brain2 oblique 1x1x2 low
#: noise), where they ranged: residual_ratio 0.31-0.99, std_ratio 1.06-1.37, std_field 2.69-3.33,
#: cone_ratio 0.63-2.89, correlation 0.89-0.96 (std_field has the least margin, 8 %). On the real 3 T
#: hemorrhage field: unet residual_ratio 1.59, correlation 0.61; unet_tv std_field 3.86; cascade3_tv 4.01.
DEFAULT_LIMITS = {
    "residual_ratio": (None, 1.2),
    "std_ratio": (None, 1.6),
    "std_field": (None, 3.6),
    "cone_ratio": (None, 4.0),
    "correlation": (0.75, None),
}


def _stats(chi: torch.Tensor, field: torch.Tensor, m: torch.Tensor, op: DipoleOperator, cone: torch.Tensor):
    inside = m > 0
    res = op.residual(chi, field, m)[0]
    spec = torch.fft.rfftn(chi * m).abs().square()
    return {
        "residual": float(res),
        "std": float(chi[inside].std()),
        "cone_fraction": float(spec[cone].sum() / spec.sum().clamp_min(1e-30)),
    }


def assess(chi, field, mask, geometry: Geometry, reference=None, limits: dict | None = None) -> dict:
    """The guard's verdict on one prediction.

    Args:
        chi: (X, Y, Z) predicted susceptibility (ppm), tensor.
        field: (X, Y, Z) local field (ppm), same device.
        mask: (X, Y, Z), non-zero inside the brain.
        geometry: the field's :class:`Geometry`.
        reference: (X, Y, Z) closed-form solution (ppm); computed with :data:`REFERENCE_SOLVER` and
            :data:`REFERENCE_PARAMS` if None.
        limits: ranges per statistic (default :data:`DEFAULT_LIMITS`).

    Returns:
        ``{"in_domain": bool, "reasons": [str], "stats": {...}, "limits": {...}}``; the statistics
        are those of the module docstring, floats.
    """
    from qsmnet.solvers import SOLVERS

    limits = dict(DEFAULT_LIMITS if limits is None else limits)
    with torch.no_grad():
        chi = torch.as_tensor(chi, dtype=torch.float32)
        f = torch.as_tensor(field, dtype=torch.float32, device=chi.device)
        m = torch.as_tensor(mask, device=chi.device).ne(0).to(torch.float32)
        if reference is None:
            reference = SOLVERS[REFERENCE_SOLVER](f, m, geometry, **REFERENCE_PARAMS)
        ref = torch.as_tensor(reference, dtype=torch.float32, device=chi.device) * m
        op = DipoleOperator(geometry, pad=True).to(chi.device)
        cone = dipole_kernel(geometry.shape, geometry.voxel_size, geometry.b0_dir, half=True,
                             device=chi.device).abs() < CONE_THRESHOLD  # fmt: skip
        s, r = _stats(chi * m, f, m, op, cone), _stats(ref, f, m, op, cone)
        inside = m > 0
        a, b = chi[inside] - chi[inside].mean(), ref[inside] - ref[inside].mean()
        corr = float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))
        stats = {
            "residual": s["residual"],
            "residual_reference": r["residual"],
            "residual_ratio": s["residual"] / max(r["residual"], 1e-12),
            "std_ratio": s["std"] / max(r["std"], 1e-12),
            "std_field": s["std"] / max(float(f[inside].std()), 1e-12),
            "cone_fraction": s["cone_fraction"],
            "cone_ratio": s["cone_fraction"] / max(r["cone_fraction"], 1e-12),
            "correlation": corr,
        }
    reasons = []
    for key, (lo, hi) in limits.items():
        v = stats[key]
        if lo is not None and v < lo:
            reasons.append(f"{key} {v:.3g} < {lo:g}")
        if hi is not None and v > hi:
            reasons.append(f"{key} {v:.3g} > {hi:g}")
    return {
        "in_domain": not reasons,
        "reasons": reasons,
        "stats": {k: round(v, 5) for k, v in stats.items()},
        "limits": {k: list(v) for k, v in limits.items()},
        "reference": REFERENCE_SOLVER,
    }


class GuardedMethod:
    """A network method whose every prediction is checked by :func:`assess`.

    Args:
        method: a network method (e.g. :class:`~qsmnet.inference.network.NetworkMethod`).
        fallback: a solver name returned instead of a flagged prediction, or None (only report).

    Calls take the wrapped method's parameters; ``info["guard"]`` gets the verdict plus
    ``"returned"``: the network's name, or the fallback's when it replaced the prediction.
    """

    def __init__(self, method: Callable, fallback: str | None = "tv"):
        self.method = method
        self.fallback = fallback
        self.name = getattr(method, "name", "network")
        self.__signature__ = inspect.signature(method)
        meta = getattr(method, "meta", None) or {}
        self.limits = {**DEFAULT_LIMITS, **{k: tuple(v) for k, v in (meta.get("guard") or {}).items()}}

    def __getattr__(self, item):  # check_geometry, describe, meta, ...
        return getattr(self.__dict__["method"], item)

    def __call__(self, field, mask, geometry: Geometry, *, info: dict | None = None, **params):
        info = {} if info is None else info
        chi = self.method(field, mask, geometry, info=info, **params)
        verdict = assess(chi, field, mask, geometry, limits=self.limits)
        verdict["returned"] = self.name
        if not verdict["in_domain"]:
            why = "; ".join(verdict["reasons"])
            if self.fallback:
                from qsmnet.solvers import SOLVERS

                sub: dict = {}
                chi = SOLVERS[self.fallback](field, mask, geometry, info=sub)
                verdict["returned"] = self.fallback
                info["iterations"] = sub.get("iterations")
                log.warning("%s looks out of domain (%s); returning the %s solution instead",
                            self.name, why, self.fallback)
            else:
                log.warning("%s looks out of domain (%s)", self.name, why)
        info["guard"] = verdict
        return chi

