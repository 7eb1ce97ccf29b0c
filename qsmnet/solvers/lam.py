"""Choosing the regularisation weight per subject: noise estimate + discrepancy principle.

On real data the best lambda is often an order of magnitude larger than on clean simulations
(noise, background-field remnants and model errors all look like signal to the inversion), so a
fixed default fails patients. ``lam="auto"`` in :mod:`tikhonov`, :mod:`tv` and :mod:`medi` picks
lambda per sample such that the data residual matches the noise estimated from the field itself
(Morozov's discrepancy principle)::

    ||M (A chi_lam - f)|| = tau * sigma * sqrt(N_mask)

``sigma`` comes from the field's 6-neighbour Laplacian inside the eroded mask: for white noise
the Laplacian has standard deviation ``sqrt(42) sigma`` while the smooth dipole field contributes
little, and a median absolute deviation ignores the edges that remain. The residual grows
monotonically with lambda, so a bisection in log(lambda) finds the match; every sample of a
batch gets its own lambda.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .base import Problem

#: Safety factor of the discrepancy target (tuned in scripts/tune_solvers.py).
TAU = 1.0


def erode(mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """6-neighbour binary erosion of a (B, 1, X, Y, Z) 0/1 mask, ``steps`` times."""
    m = mask
    for _ in range(steps):
        out = m.clone()
        for d in (-3, -2, -1):
            out = out * torch.roll(m, 1, dims=d) * torch.roll(m, -1, dims=d)
        m = out
    return m


def estimate_noise(field: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Robust standard deviation (ppm) of white noise in a field, per sample.

    Args:
        field: (B, 1, X, Y, Z) field (ppm).
        mask: (B, 1, X, Y, Z) 0/1 mask.

    Returns:
        (B,) sigma estimates in ppm (0 where the eroded mask is empty).
    """
    lap = sum(torch.roll(field, s, dims=d) for d in (-3, -2, -1) for s in (1, -1)) - 6 * field
    inner = erode(mask, 2) > 0
    out = []
    for b in range(field.shape[0]):
        v = lap[b][inner[b]]
        if v.numel() < 10:
            out.append(torch.zeros((), device=field.device))
            continue
        mad = (v - v.median()).abs().median()
        out.append(1.4826 * mad / math.sqrt(42.0))
    return torch.stack(out)


def discrepancy_target(p: Problem, tau: float = TAU) -> torch.Tensor:
    """(B,) relative residual ``tau * sigma * sqrt(N) / ||M f||`` the discrepancy principle aims at."""
    sigma = estimate_noise(p.field, p.mask)
    n = p.mask.flatten(1).sum(1)
    fnorm = p.field.flatten(1).norm(dim=1).clamp_min(1e-30)
    return tau * sigma * n.sqrt() / fnorm


def discrepancy_search(
    residual_fn: Callable[[torch.Tensor], torch.Tensor],
    target: torch.Tensor,
    lo: float,
    hi: float,
    steps: int = 12,
) -> torch.Tensor:
    """Per-sample bisection in log10(lambda) for ``residual_fn(lam) == target``.

    Args:
        residual_fn: maps lambdas (B, 1, 1, 1, 1) to relative residuals (B,); assumed increasing.
        target: (B,) residuals to reach.
        lo, hi: search bracket; a sample whose target is out of reach gets the nearer end.
        steps: bisection steps (the bracket shrinks by 2**steps in log space).

    Returns:
        (B, 1, 1, 1, 1) chosen lambdas on the target's device.
    """
    b = target.shape[0]
    a = torch.full((b,), math.log10(lo), device=target.device, dtype=torch.float64)
    z = torch.full((b,), math.log10(hi), device=target.device, dtype=torch.float64)
    for _ in range(steps):
        mid = (a + z) / 2
        r = residual_fn((10.0**mid).float().view(b, 1, 1, 1, 1))
        too_big = r > target
        z = torch.where(too_big, mid, z)
        a = torch.where(too_big, a, mid)
    return (10.0 ** ((a + z) / 2)).float().view(b, 1, 1, 1, 1)


def as_lambda(lam, p: Problem) -> torch.Tensor:
    """A numeric lambda as a (1, 1, 1, 1, 1) tensor on the problem's device."""
    lam = float(lam)
    if not lam > 0 or not math.isfinite(lam):
        raise ValueError(f"lambda must be a positive number or 'auto', got {lam}")
    return torch.full((1, 1, 1, 1, 1), lam, device=p.device)


def is_auto(lam) -> bool:
    return isinstance(lam, str) and lam.lower() == "auto"


def lambda_summary(lam: torch.Tensor) -> float | list[float]:
    """A lambda tensor for ``info``: one float, or a list per sample."""
    v = [float(x) for x in lam.flatten()]
    return v[0] if len(v) == 1 else v
