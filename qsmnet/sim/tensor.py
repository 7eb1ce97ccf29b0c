"""Field of an anisotropic susceptibility tensor (the generalised Lorentzian / STI forward model).

For a tensor chi_ij(r) (ppm) and unit B0 direction b (voxel axes), the relative field shift along
B0 is, in k-space,

    f(k) = sum_ij ( b_i b_j / 3 - (k . b) k_i b_j / |k|^2 ) chi_ij(k)
         = b . U(k) / 3 - (k . b) (k . U(k)) / |k|^2,      U_i = sum_j chi_ij b_j,

so only the three "moment" components U = chi b are needed (three FFTs, one inverse). An
isotropic tensor chi_ij = chi delta_ij gives U = chi b and f = (1/3 - (k.b)^2/|k|^2) chi(k): the
scalar dipole model of :mod:`qsmnet.physics.dipole`. f(0) is set to 0, like D(0).

The convolution is zero-padded to an odd FFT length per axis (no Nyquist sample, so the operator
is exactly real and even for any B0 direction). Sources beyond the grid count as zero: to model
a head in air, pass chi minus the chi of air (so that the outside is zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from qsmnet.physics import next_fast_len, normalise


def odd_fast_len(n: int) -> int:
    """Smallest odd integer >= n with prime factors 3, 5 and 7 only."""
    m = next_fast_len(n)
    while m % 2 == 0:
        m = next_fast_len(m + 1)
    return m


def padded_shape(shape: Sequence[int], pad: bool | int = True) -> tuple[int, int, int]:
    """Padded FFT grid: each axis grown by its own size (``pad=True``) or ``pad`` voxels, odd length."""
    extra = [int(n) if pad is True else int(pad or 0) for n in shape]
    return tuple(odd_fast_len(int(n) + e) for n, e in zip(shape, extra, strict=True))


def moment_field(
    u: torch.Tensor,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: bool | int = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Field (ppm) of the moment density ``u = chi b`` (see the module docstring).

    Args:
        u: (3, X, Y, Z) components ``sum_j chi_ij b_j`` (ppm) along the voxel axes.
        voxel_size: mm per voxel.
        b0_dir: B0 direction in voxel axes (normalised here).
        pad: zero padding (True: the grid's own size per axis; an int: voxels per axis).
        dtype: FFT precision.

    Returns:
        (X, Y, Z) field in ppm, float32 (float64 when ``dtype`` is float64), on u's device.
    """
    b = normalise(b0_dir)
    shape = tuple(u.shape[-3:])
    s = padded_shape(shape, pad)
    freqs = [
        torch.as_tensor(np.fft.fftfreq(n, d=v), dtype=dtype, device=u.device)
        for n, v in zip(s, voxel_size, strict=True)
    ]
    freqs[2] = freqs[2][: s[2] // 2 + 1]
    k = [freqs[0][:, None, None], freqs[1][None, :, None], freqs[2][None, None, :]]
    k2 = k[0] ** 2 + k[1] ** 2 + k[2] ** 2
    kb_over = (k[0] * b[0] + k[1] * b[1] + k[2] * b[2]) / torch.where(k2 > 0, k2, torch.ones_like(k2))
    acc = None
    for i in range(3):
        c = b[i] / 3.0 - kb_over * k[i]  # C_i(k)
        c[0, 0, 0] = 0.0
        spec = torch.fft.rfftn(u[i].to(dtype), s=s)
        acc = spec * c if acc is None else acc + spec * c
    out = torch.fft.irfftn(acc, s=s)[: shape[0], : shape[1], : shape[2]]
    return out.contiguous() if dtype == torch.float64 else out.to(torch.float32).contiguous()


def lowpass(x: torch.Tensor, sigma: float = 0.7) -> torch.Tensor:
    """Gaussian low-pass of (X, Y, Z) ``x``, ``sigma`` in voxels (applied in k-space, periodic).

    Used on sharp sources before an oblique-B0 forward: the discrete kernel's high-k part at an
    oblique angle turns an unresolved edge into ringing. A Gaussian (not a sharp window) keeps the
    smoothed source within a few voxels of where it was, so none of it leaks far into the brain.
    """
    s = tuple(x.shape[-3:])
    fr = [torch.as_tensor(np.fft.fftfreq(n), dtype=torch.float64, device=x.device) for n in s]
    fr[2] = fr[2][: s[2] // 2 + 1]
    f2 = fr[0][:, None, None] ** 2 + fr[1][None, :, None] ** 2 + fr[2][None, None, :] ** 2
    w = torch.exp(-2.0 * math.pi**2 * sigma**2 * f2)
    return torch.fft.irfftn(torch.fft.rfftn(x.double()) * w, s=s).to(x.dtype)


def tensor_moment(
    chi: torch.Tensor,
    b0_dir: Sequence[float],
    aniso: torch.Tensor | None = None,
    fibre: torch.Tensor | None = None,
) -> torch.Tensor:
    """``U = chi_tensor b`` for a cylindrically symmetric tensor with mean ``chi``.

    ``chi_tensor = chi I + aniso (v v^T - I / 3)`` (``aniso`` = chi_parallel - chi_perp, ``v`` the
    unit fibre direction), so ``U = chi b + aniso ((v . b) v - b / 3)``; its trace / 3 is ``chi``.

    Args:
        chi: (X, Y, Z) mean (scalar) susceptibility, ppm.
        b0_dir: B0 direction in voxel axes.
        aniso: (X, Y, Z) anisotropy chi_par - chi_perp (ppm) or None (isotropic).
        fibre: (3, X, Y, Z) unit fibre directions (voxel axes), needed with ``aniso``.

    Returns:
        (3, X, Y, Z) float tensor.
    """
    b = torch.as_tensor(normalise(b0_dir), dtype=chi.dtype, device=chi.device)[:, None, None, None]
    u = chi[None] * b
    if aniso is not None:
        vb = (fibre * b).sum(0, keepdim=True)
        u = u + aniso[None] * (vb * fibre - b / 3.0)
    return u


def tensor_field(
    chi_tensor: torch.Tensor,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: bool | int = True,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Field (ppm) of a full tensor map ``chi_tensor``: (3, 3, X, Y, Z), ppm (symmetric)."""
    b = torch.as_tensor(normalise(b0_dir), dtype=chi_tensor.dtype, device=chi_tensor.device)
    u = torch.einsum("ijxyz,j->ixyz", chi_tensor, b)
    return moment_field(u, voxel_size, b0_dir, pad=pad, dtype=dtype)
