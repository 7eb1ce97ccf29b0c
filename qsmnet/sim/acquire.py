"""Whole-head fields and a multi-echo acquisition of them.

:func:`head_fields` gives, on the phantom's (fine) grid, the total field of the whole head (the
anisotropic tensor of every tissue, in air: the field of ``chi - CHI_AIR`` zero-padded, so the
air continues beyond the grid), plus the hollow-cylinder offset, and the local field (the brain's
sources alone, same non-dipolar parts). :func:`acquire` turns the total field into the complex
multi-echo signal (M0, R2*, a smooth receiver phase, the field), averages it over blocks of fine
voxels onto the acquisition grid (complex averaging: intravoxel dephasing included), adds complex
Gaussian noise of std ``1 / snr`` (signal of CSF at TE 0 is 1) and returns wrapped phase and
magnitude, plus the field an ideal multi-echo fit would give (temporal unwrapping by the true
field, weighted least squares through the known receiver phase).

``dephasing=True`` also dephases each fine voxel by the field's gradient across it: the integral of
a linear phase over the voxel, ``prod_i sinc(span_i / 2)`` with ``span_i`` the phase change across
the voxel along axis i at each echo (the signal voids next to sinuses and mastoids, where a real scan
loses the brain's edge). Without it a 1 mm simulation keeps full signal where the field changes by
several radians per voxel at the late echoes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qsmnet.physics import hz_to_ppm, ppm_to_hz, ppm_to_rad

from .head import CHI_AIR, REAL_FIELD_PROFILE, REAL_FIELD_SNR, HeadPhantom, microstructure_offset
from .tensor import lowpass, moment_field, tensor_moment
from .textures import smooth_random_field

DEFAULT_TE = (0.004, 0.009, 0.014, 0.019, 0.024)
#: 1 / noise std of the complex signal (M0 = 1 at TE 0); 30 brings the residual of the realistic
#: tier near the real field's (docs/realism.md).
DEFAULT_SNR = 30.0
#: Named head settings: (``head_phantom`` keyword arguments, acquisition SNR) (docs/realism.md).
HEAD_PROFILES = {"generator": ({}, DEFAULT_SNR), "real-field": (REAL_FIELD_PROFILE, REAL_FIELD_SNR)}


#: Gaussian sigma (voxels) of the extracerebral sources at oblique B0 (benchmark v2, the ``head``
#: phantom command; docs/realism.md: 45 deg remnant after V-SHARP 0.045 -> 0.0045 ppm).
OBLIQUE_BANDLIMIT = 0.7


def oblique_bandlimit(b0_dir, sigma: float | None = OBLIQUE_BANDLIMIT) -> float | None:
    """``sigma`` when ``b0_dir`` (voxel axes) is oblique to the grid, else None (the ``bandlimit``
    of :func:`head_fields`)."""
    return sigma if max(abs(float(c)) for c in b0_dir) < 1.0 - 1e-9 else None


def head_fields(
    ph: HeadPhantom,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    anisotropy: bool = True,
    micro: bool = True,
    bandlimit: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total and local field (ppm) of a head phantom on its grid.

    ``anisotropy``: include the WM tensor anisotropy; ``micro``: include the non-convolutional
    offsets (hollow cylinder and texture); ``bandlimit``: if given, the sources outside the brain
    (``chi - CHI_AIR - brain_chi``, isotropic) are Gaussian-smoothed with this sigma in voxels
    (:func:`~qsmnet.sim.tensor.lowpass`) before their forward, and the total is the brain's own
    field plus theirs. Use it with oblique B0: the unresolved 9.4 ppm air edge otherwise rings
    through the discrete kernel into a non-harmonic background inside the brain. The brain's chi
    (and so ``local``) is never filtered: the truth stays its own dipole field on the grid.

    Returns:
        total: (X, Y, Z) field of the whole head in air (+ the offset), ppm, defined up to a constant.
        local: (X, Y, Z) field of the brain's chi alone (+ the offset), demeaned in the brain mask,
            zero outside it.
    """
    aniso = ph.aniso if anisotropy else None
    fib = ph.fibre if anisotropy else None
    off = microstructure_offset(ph.wm, ph.fibre, b0_dir, ph.micro_ppm) + ph.offset if micro else 0.0
    local = (
        moment_field(tensor_moment(ph.brain_chi, b0_dir, aniso, fib), voxel_size, b0_dir, dtype=dtype) + off
    )
    if bandlimit is None:
        total = (
            moment_field(tensor_moment(ph.chi - CHI_AIR, b0_dir, aniso, fib), voxel_size, b0_dir, dtype=dtype)
            + off
        )
    else:
        outside = lowpass(ph.chi - CHI_AIR - ph.brain_chi, bandlimit)
        total = local + moment_field(tensor_moment(outside, b0_dir), voxel_size, b0_dir, dtype=dtype)
    m = ph.mask > 0
    local = (local - local[m].mean()) * ph.mask
    return total, local


def block_mean(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Average (..., X, Y, Z) over blocks of ``factors`` voxels (trailing remainders dropped)."""
    f = [int(v) for v in factors]
    if f == [1, 1, 1]:
        return x
    n = [s // k for s, k in zip(x.shape[-3:], f, strict=True)]
    y = x[..., : n[0] * f[0], : n[1] * f[1], : n[2] * f[2]]
    y = y.reshape(*x.shape[:-3], n[0], f[0], n[1], f[1], n[2], f[2])
    return y.mean(dim=(-5, -3, -1))


@dataclass
class Acquisition:
    """The result of :func:`acquire` on the acquisition grid.

    Attributes:
        phase: (E, X, Y, Z) wrapped phase (rad).
        magnitude: (E, X, Y, Z) magnitude (a.u.).
        field: (X, Y, Z) field of an ideal multi-echo fit (ppm; noise and dephasing included).
        receiver_phase: (X, Y, Z) receiver phase offset (rad) used.
        noise_ppm: (X, Y, Z) fitted minus true (block-averaged) field (ppm).
    """

    phase: torch.Tensor
    magnitude: torch.Tensor
    field: torch.Tensor
    receiver_phase: torch.Tensor
    noise_ppm: torch.Tensor


def acquire(
    total_ppm: torch.Tensor,
    m0: torch.Tensor,
    r2star: torch.Tensor,
    voxel_size: Sequence[float],
    rng: np.random.Generator,
    *,
    te: Sequence[float] = DEFAULT_TE,
    b0: float = 3.0,
    snr: float = DEFAULT_SNR,
    factors: Sequence[int] = (1, 1, 1),
    dephasing: bool = False,
) -> Acquisition:
    """Multi-echo gradient-echo signal of a total field (see the module docstring).

    Args:
        total_ppm: (X, Y, Z) total field (ppm) on the fine grid.
        m0, r2star: (X, Y, Z) proton density and R2* (1/s) on the fine grid.
        voxel_size: fine-grid voxel size (mm).
        rng: numpy Generator (receiver phase, noise).
        te: echo times (s).
        b0: field strength (T).
        snr: 1 / noise std on the acquisition grid (signal of M0 = 1 at TE 0).
        factors: fine voxels per acquisition voxel along each axis.
        dephasing: dephase each fine voxel by the field gradient across it (module docstring).
    """
    phi0 = smooth_random_field(tuple(total_ppm.shape), voxel_size, rng, scales_mm=(60.0,), weights=(1.0,))
    te_t = torch.as_tensor([float(t) for t in te], dtype=torch.float32)
    # field change across one fine voxel along each axis (ppm; central differences per voxel)
    spans = list(torch.gradient(total_ppm.float())) if dephasing else []
    sig = []
    for t in te_t:
        ph = ppm_to_rad(total_ppm, te=float(t), b0=b0) + phi0
        amp = m0 * torch.exp(-float(t) * r2star)
        for span in spans:  # sinc(x / 2) of the phase span x; torch.sinc(u) = sin(pi u) / (pi u)
            amp = amp * torch.sinc(ppm_to_rad(span, te=float(t), b0=b0) / (2 * np.pi))
        # a signed amplitude (sinc < 0 flips the phase): polar() takes |amp| only
        sig.append(block_mean(torch.polar(amp.abs(), ph) * (amp.sign() if spans else 1), factors))
    s = torch.stack(sig)
    shape = tuple(s.shape[1:])
    noise = torch.complex(
        torch.from_numpy(rng.standard_normal(s.shape, dtype=np.float32)),
        torch.from_numpy(rng.standard_normal(s.shape, dtype=np.float32)),
    ) / float(snr)
    s = s + noise
    phi0_a = torch.angle(block_mean(torch.polar(torch.ones_like(phi0), phi0), factors))
    f_true = block_mean(total_ppm, factors)
    # ideal temporal unwrapping: add the 2 pi multiples that bring each echo nearest the true phase
    ref = 2 * np.pi * ppm_to_hz(f_true[None], b0) * te_t[:, None, None, None]  # rad at each TE
    psi = torch.angle(s * torch.polar(torch.ones(shape), -phi0_a)[None])
    psi = psi + 2 * np.pi * torch.round((ref - psi) / (2 * np.pi))
    w = s.abs().square() * te_t[:, None, None, None]
    slope = (w * psi).sum(0) / (w * te_t[:, None, None, None]).sum(0).clamp_min(1e-20)
    fit = hz_to_ppm(slope / (2 * np.pi), b0)  # slope in rad/s
    fit = torch.where((w.sum(0) > 0), fit, f_true)
    return Acquisition(
        phase=torch.angle(s),
        magnitude=s.abs(),
        field=fit.float(),
        receiver_phase=phi0_a,
        noise_ppm=(fit - f_true).float(),
    )
