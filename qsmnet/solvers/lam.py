"""The white-noise balance rule: lambda from the noise estimated in the field (chooser ``"noise"``).

``lam="noise"`` in :mod:`tikhonov`, :mod:`tv` and :mod:`medi` picks lambda per sample by a
noise-to-signal balance (the MAP / Wiener choice for a Gaussian or Laplacian prior on the
gradient of chi)::

    tikhonov:  lam = KAPPA_L2 * sigma^2 / mean_M |grad chi_0|^2
    tv, medi:  lam = KAPPA_L1 * sigma^2 / mean_M |grad chi_0|_1

``chi_0`` is a pilot closed-form Tikhonov solution (one FFT pair) and ``sigma`` the noise of the
field, from its 6-neighbour Laplacian inside the eroded mask: for white noise the Laplacian has
standard deviation ``sqrt(42) sigma``, the smooth dipole field contributes little, and a median
absolute deviation ignores the edges that remain.

What it was calibrated on, and where it fails: the constants come from ``scripts/tune_solvers.py``
on 48^3 brain phantoms at 3.5 mm with white noise only, and the rule is near the best lambda on
such data (the 16-case benchmark set: TV mean nRMSE 25.3 %). On fields with in vivo-like model
error (background remnants, anisotropy, edge errors: 56-68 % of the field's norm in vivo) it
picks lambda 4-7x too small (an in vivo 3 T field: 1.7e-4 where 1e-3 was best; the realistic
brains of ``scripts/benchmark_lambda.py``: 0.21-0.23x the per-case best), because that error is
neither white nor visible to a Laplacian noise estimate. ``lam="auto"`` therefore multiplies this
rule by a model-error factor from the field's power on the magic-angle cone
(:func:`qsmnet.solvers.select.model_error_factor`, chooser ``"model"``).

Morozov's discrepancy principle was tried first and failed on small, clean volumes (the misfit
floor of the unweighted TV of the time) and was removed.
"""

from __future__ import annotations

import math

import torch

from .base import Problem

#: kappa of the L2 (Tikhonov) rule: per-case best lambda * s2 / sigma^2 ranged 0.14-0.42 on brain
#: phantoms (48^3, 3.5 mm, noise 0.001/0.003 ppm, tilts 0/25 deg); the rule then lands within
#: 1.7x of each case's best lambda.
KAPPA_L2 = 0.25
#: kappa of the L1 (TV, MEDI) rule, calibrated the same way: per-case values 0.19 (noise 0.001)
#: and 0.69 (noise 0.003 ppm); 0.35 is their geometric mean (within 2x of either best lambda).
KAPPA_L1 = 0.35
#: lambda of the pilot Tikhonov solution.
PILOT_LAMBDA = 0.03


def erode(mask: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """6-neighbour binary erosion of a (B, 1, X, Y, Z) 0/1 mask, ``steps`` times."""
    m = mask
    for _ in range(steps):
        out = m.clone()
        for d in (-3, -2, -1):
            out = out * torch.roll(m, 1, dims=d) * torch.roll(m, -1, dims=d)
        m = out
    return m


def mad_std(v: torch.Tensor) -> torch.Tensor:
    """Robust standard deviation of the values ``v``: 1.4826 x their median absolute deviation
    (equal to the std for Gaussian values, blind to a few strong outliers)."""
    return 1.4826 * (v - v.median()).abs().median()


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
        out.append(mad_std(v) / math.sqrt(42.0))
    return torch.stack(out)


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


def balanced_lambda(p: Problem, chi0: torch.Tensor, prior: str) -> torch.Tensor:
    """Per-sample lambda (B, 1, 1, 1, 1) from the noise and a pilot solution (see module docstring).

    Args:
        p: the problem (field, mask, geometries).
        chi0: (B, 1, X, Y, Z) pilot chi (ppm).
        prior: ``"l2"`` (Tikhonov with gradient regulariser) or ``"l1"`` (TV).
    """
    from qsmnet.physics.linalg import gradient

    sigma = estimate_noise(p.field, p.mask)
    n = p.mask.flatten(1).sum(1).clamp_min(1)
    lams = []
    for b in range(p.field.shape[0]):
        g = gradient(chi0[b, 0], p.geometries[b].voxel_size)
        if prior == "l2":
            s, kappa = (g * g).sum(0), KAPPA_L2
        else:
            s, kappa = g.abs().sum(0), KAPPA_L1
        sig_b = float((s * p.mask[b, 0]).sum() / n[b])
        lams.append(kappa * float(sigma[b]) ** 2 / max(sig_b, 1e-30))
    lam = torch.tensor(lams, device=p.device, dtype=torch.float32).clamp(1e-7, 10.0)
    return lam.view(-1, 1, 1, 1, 1)
