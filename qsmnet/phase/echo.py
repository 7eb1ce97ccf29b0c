"""Echo combination: wrapped multi-echo phase and magnitude -> frequency (Hz), TE=0 offset, its std.

The signal of echo e is ``m_e exp(i (phi0 + 2 pi f TE_e))``. :func:`fit_field` needs one spatial
unwrap only, of the first-to-second echo difference, whatever the number of echoes:

1. ``dphi = angle(s_2 conj(s_1))`` (Hermitian inner product; for uniform echo spacing the
   magnitude-weighted sum over all consecutive pairs), unwrapped spatially, then shifted by the
   multiple of 2 pi that brings its mean over the mask into [-pi, pi) (the scanner's centre
   frequency is tuned on the tissue, so the mean offset is taken as the smallest one);
   ``f0 = dphi / (2 pi dTE)``;
2. the TE=0 offset ``phi0 = angle(sum_e m_e exp(i (phi_e - 2 pi f0 TE_e)))``;
3. temporal unwrapping: echo by echo in TE order, each echo's phase is taken on the branch
   nearest the prediction of the fit so far (so every echo may wrap many times);
4. a weighted least-squares line (intercept and slope) through the unwrapped phases, weights
   ``m_e^2`` (phase noise variance is ``sigma^2 / m_e^2``); its slope is the field.

A single echo has no offset information: the field is its unwrapped phase over ``2 pi TE``
(phi0 taken as 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._util import as_tensor, wrap
from .unwrap import unwrap_laplacian, unwrap_quality

#: Relative tolerance under which echo spacings count as uniform.
UNIFORM_TOL = 1e-3


def _unwrap(phase, mask, voxel_size, how: str) -> torch.Tensor:
    if how == "quality":
        return unwrap_quality(phase, mask)
    if how == "laplacian":
        return unwrap_laplacian(phase, voxel_size, mask=mask, congruent=True)
    raise ValueError(f"unknown unwrapping {how!r}: choose quality or laplacian")


def _centre(u: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Remove the multiple of 2 pi that puts the mean of ``u`` over ``mask`` into [-pi, pi)."""
    mean = u[mask].mean() if bool(mask.any()) else u.new_zeros(())
    return u - 2 * math.pi * torch.round(mean / (2 * math.pi))


def fit_field(
    phase,
    magnitude,
    te: Sequence[float],
    mask,
    *,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    unwrap: str = "quality",
    noise_std: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Frequency map from wrapped multi-echo phase (see the module docstring for the method).

    Args:
        phase: (E, X, Y, Z) or (X, Y, Z) wrapped phase (rad), tensor or array (any device).
        magnitude: same shape, or None (equal weights).
        te: E echo times (s), any order.
        mask: (X, Y, Z) region to fit (non-zero inside); the outputs are zero outside it.
        voxel_size: voxel size (mm), for the Laplacian unwrapper.
        unwrap: spatial unwrapper, ``"quality"`` (exact, scikit-image) or ``"laplacian"``.
        noise_std: std of the complex noise in magnitude units; None: estimated from the fit
            residuals (3 or more echoes) or the magnitude outside the mask (Rayleigh), else 1
            (then the std map is relative).

    Returns:
        ``(field_hz, phase0, std_hz)``: (X, Y, Z) float32 tensors on the phase's device: the
        frequency offset (Hz), the TE=0 phase (rad, wrapped) and the field's standard error (Hz).

    Raises:
        ValueError: shapes or echo counts that do not agree, or non-positive echo times.
    """
    p = as_tensor(phase)
    if p.dim() == 3:
        p = p[None]
    dev = p.device
    if p.dim() != 4:
        raise ValueError(f"phase must be (E, X, Y, Z) or (X, Y, Z), got shape {tuple(p.shape)}")
    n_echo = p.shape[0]
    te_list = [float(t) for t in te]
    if len(te_list) != n_echo:
        raise ValueError(f"{n_echo} echo(es) of phase but {len(te_list)} echo time(s)")
    if min(te_list) <= 0:
        raise ValueError(f"echo times must be positive (s), got {te_list}")
    has_mag = magnitude is not None
    mag = as_tensor(magnitude, device=dev).reshape(p.shape) if has_mag else torch.ones_like(p)
    m = as_tensor(mask, device=dev) != 0
    order = sorted(range(n_echo), key=lambda e: te_list[e])
    p, mag = p[order], mag[order]
    t = torch.tensor([te_list[e] for e in order], dtype=torch.float32, device=dev)
    w = mag * mag

    if n_echo == 1:
        u = _centre(_unwrap(p[0], m, voxel_size, unwrap), m)
        field = u / (2 * math.pi * t[0])
        sigma = float(noise_std) if noise_std is not None else _background_sigma(mag, m, has_mag)
        std = sigma / (2 * math.pi * t[0] * mag[0].clamp_min(1e-12))
        return field * m, torch.zeros_like(field), std * m

    s = torch.polar(mag, p)
    dt = torch.diff(t)
    pairs = s[1:] * s[:-1].conj()
    uniform = bool(torch.all((dt - dt[0]).abs() <= UNIFORM_TOL * dt[0]))
    prod = pairs.sum(0) if uniform else pairs[0]
    u = _centre(_unwrap(torch.angle(prod), m, voxel_size, unwrap), m)
    omega = u / dt[0]  # rad/s
    phi0 = torch.angle((mag * torch.exp(1j * (p - omega * t[:, None, None, None]))).sum(0))

    psi = torch.empty_like(p)
    for e in range(n_echo):  # temporal unwrapping against the running fit
        pred = phi0 + omega * t[e]
        psi[e] = pred + wrap(p[e] - pred)
        if e >= 1:
            phi0, omega = _line(psi[: e + 1], w[: e + 1], t[: e + 1])
    resid = psi - (phi0 + omega * t[:, None, None, None])
    tw = (w * t[:, None, None, None]).sum(0) / w.sum(0).clamp_min(1e-30)
    sxx = (w * (t[:, None, None, None] - tw) ** 2).sum(0).clamp_min(1e-30)
    if noise_std is not None:
        sigma = float(noise_std)
    elif n_echo >= 3 and bool(m.any()):
        sigma = float(((w * resid**2).sum(0)[m] / (n_echo - 2)).mean().sqrt())
    else:
        sigma = _background_sigma(mag, m, has_mag)
    std = sigma / (2 * math.pi * sxx.sqrt())
    return (omega / (2 * math.pi)) * m, wrap(phi0) * m, std * m


def _line(psi: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least-squares ``psi_e = a + b t_e`` per voxel: returns (a, b)."""
    tt = t[:, None, None, None]
    sw = w.sum(0).clamp_min(1e-30)
    tm = (w * tt).sum(0) / sw
    pm = (w * psi).sum(0) / sw
    sxx = (w * (tt - tm) ** 2).sum(0).clamp_min(1e-30)
    b = (w * (tt - tm) * (psi - pm)).sum(0) / sxx
    return pm - b * tm, b


def _background_sigma(mag: torch.Tensor, mask: torch.Tensor, has_mag: bool) -> float:
    """Complex noise std from the first echo's magnitude outside the mask (Rayleigh mean), else 1."""
    bg = mag[0][~mask]
    if not has_mag or bg.numel() < 1000:
        return 1.0
    return float(bg.mean()) / math.sqrt(math.pi / 2)
