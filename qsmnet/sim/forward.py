"""Forward simulation: phantom chi -> local field (ppm), with noise and the imperfections of real data.

The field is ``forward_field(chi)`` (the Foundation dipole model, zero-padded against wrap-around)
plus Gaussian noise, plus optional imperfections, then truncated to the mask. Each imperfection is
switched by :data:`DEFAULT_IMPERFECTIONS` keys; a value is a bool or a probability in [0, 1] with
which it is applied to a sample:

- ``background_residual``: a smooth low-order (<= 2) polynomial field over the mask, peak
  |value| 0.005-0.03 ppm, as left by imperfect background-field removal.
- ``nondipolar``: a non-dipolar perturbation (e.g. white-matter anisotropy, chemical exchange):
  a fine-scale smooth random field of std 0.002-0.01 ppm, weighted by ``weight`` (e.g. the WM
  probability) when given, else by the mask.
- ``edge_errors``: the mask is eroded by 0-2 voxels and errors of std 0.01-0.05 ppm are added in a
  band of 1-3 voxels inside its edge, where background removal is least reliable.
- ``external_background``: the field of sources outside the mask (chi of std 0.5-3 ppm, smooth,
  air/bone-like) is added: a total field for phase-processing work, not a local field.
- ``bfr_remnant`` (off unless asked for): the error real background-field removal leaves, in
  cheap form: a smooth random field (5-15 mm) times ``exp(-d / 10 mm)``, ``d`` the distance from
  the mask's edge, with an edge amplitude of 0.005-0.015 ppm (:func:`bfr_remnant`). Calibrated on
  V-SHARP's and PDF's errors on a real-size simulated head (``scripts/bfr_error_models.py``,
  docs/realism.md), which ``background_residual`` (flat over the brain) and ``edge_errors`` (2-4x
  too strong in a thin band) do not match. It draws from the generator only when switched on,
  so turning it on changes no other simulation's stream.
- ``multi_echo``: wrapped multi-echo phase and magnitude are also returned (see
  :func:`multi_echo_signal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qsmnet.physics import Geometry, forward_field, ppm_to_rad

from .textures import as_rng, grid_mm, smooth_random_field

#: Imperfection switches (all off: the pure dipole model plus noise).
DEFAULT_IMPERFECTIONS = {
    "background_residual": False,
    "nondipolar": False,
    "edge_errors": False,
    "external_background": False,
    "multi_echo": False,
    "bfr_remnant": False,
}
#: Switches decided by one draw each, whether on or not (the original five: their streams stay
#: aligned); the others draw only when switched on.
_ALIGNED = ("background_residual", "nondipolar", "edge_errors", "external_background", "multi_echo")
#: ``bfr_remnant``: edge amplitude range (ppm), decay length and texture scales (mm).
REMNANT_EDGE_PPM = (0.005, 0.015)
REMNANT_DECAY_MM = 10.0
REMNANT_SCALES_MM = (5.0, 15.0)


@dataclass
class Simulation:
    """The result of :func:`simulate`.

    Attributes:
        field: (X, Y, Z) float32 field in ppm, zero outside ``mask``.
        mask: (X, Y, Z) float32 0/1 mask where the field is known (eroded if ``edge_errors``).
        chi: (X, Y, Z) float32 true susceptibility (ppm), as given.
        noise: (X, Y, Z) Gaussian noise (ppm) that was added (before masking).
        clean_field: (X, Y, Z) ``forward_field(chi)`` on the whole grid (ppm, not masked).
        geometry: the acquisition geometry.
        noise_std: the noise standard deviation (ppm).
        phase: (E, X, Y, Z) wrapped phase (rad) when ``multi_echo``, else None.
        magnitude: (E, X, Y, Z) magnitude when ``multi_echo``, else None.
        te: echo times (s) when ``multi_echo``.
        applied: the imperfections that were applied.
    """

    field: torch.Tensor
    mask: torch.Tensor
    chi: torch.Tensor
    noise: torch.Tensor
    clean_field: torch.Tensor
    geometry: Geometry
    noise_std: float
    phase: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    te: tuple[float, ...] = ()
    applied: dict = field(default_factory=dict)


def _switch(value, rng: np.random.Generator) -> bool:
    """Decide an imperfection: a bool, or a probability (always draws, to keep streams aligned)."""
    u = rng.uniform()
    if isinstance(value, bool) or value is None:
        return bool(value)
    return u < float(value)


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    if r <= 0:
        return mask
    inv = 1.0 - mask[None, None]
    return 1.0 - torch.nn.functional.max_pool3d(inv, 2 * r + 1, stride=1, padding=r)[0, 0]


def edge_distance(mask: torch.Tensor, voxel_size) -> torch.Tensor:
    """Distance (mm, float64) of every voxel inside ``mask`` from the nearest voxel outside it (0 outside)."""
    from scipy import ndimage

    sampling = tuple(float(v) for v in voxel_size)
    return torch.from_numpy(ndimage.distance_transform_edt(mask.numpy() > 0, sampling=sampling))


def bfr_remnant(mask: torch.Tensor, voxel_size, rng: np.random.Generator, edge_ppm: float | None = None,
                decay_mm: float = REMNANT_DECAY_MM, scales_mm=REMNANT_SCALES_MM) -> torch.Tensor:
    """A background-removal remnant: ``edge_ppm x r x exp(-d / decay_mm)`` inside ``mask``.

    ``r`` is a unit-std smooth random field with correlation lengths ``scales_mm`` and ``d`` the
    distance (mm) from the nearest voxel outside the mask (:func:`edge_distance`), so the error is
    largest at the brain's edge and fades towards its centre, as V-SHARP's and PDF's errors do (on
    a real-size head: ~8 ppb rms within 3 mm of the edge, ~1 ppb beyond 20 mm; docs/realism.md).
    ``edge_ppm`` None draws it from :data:`REMNANT_EDGE_PPM`. Returns (X, Y, Z) float32, zero
    outside the mask.
    """
    if edge_ppm is None:
        edge_ppm = float(rng.uniform(*REMNANT_EDGE_PPM))
    d = edge_distance(mask, voxel_size)
    r = smooth_random_field(tuple(mask.shape), voxel_size, rng, scales_mm=scales_mm)
    return (float(edge_ppm) * r * torch.exp(-d.float() / float(decay_mm)) * (mask > 0)).float()


def polynomial_field(mask: torch.Tensor, voxel_size, rng: np.random.Generator, peak_ppm: float,
                     order: int = 2) -> torch.Tensor:
    """Random polynomial (degree <= ``order``) of the voxel coordinates, scaled so that its peak
    |value| inside ``mask`` is ``peak_ppm``. Returns (X, Y, Z) float32."""
    x = grid_mm(mask.shape, voxel_size)
    half = [max(float(c.abs().max()), 1e-6) for c in x]
    u = [c / h for c, h in zip(x, half, strict=False)]
    out = torch.zeros(mask.shape, dtype=torch.float32)
    for i in range(order + 1):
        for j in range(order + 1 - i):
            for k in range(order + 1 - i - j):
                if i + j + k == 0:
                    continue
                out = out + float(rng.standard_normal()) * (u[0] ** i) * (u[1] ** j) * (u[2] ** k)
    inside = out[mask > 0]
    if inside.numel():
        out = out - inside.mean()
        out = out * (peak_ppm / (out[mask > 0].abs().max().clamp_min(1e-12)))
    return out


def multi_echo_signal(total_field: torch.Tensor, mask: torch.Tensor, geometry: Geometry,
                      rng: np.random.Generator, te: Sequence[float], b0: float = 3.0,
                      snr: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Wrapped multi-echo phase and magnitude of a (total) field.

    Phase ``= ppm_to_rad(field, te, b0) + phi0`` (phi0 a smooth random receiver offset, std 1 rad),
    wrapped to (-pi, pi]; magnitude ``= M0 exp(-te R2*)`` with M0 1 +- 10 % texture inside the mask
    (0.05 outside) and R2* 20-40 1/s; complex Gaussian noise of std ``1 / snr`` on the signal.

    Returns:
        phase, magnitude: (E, X, Y, Z) float32.
    """
    shape, vs = tuple(mask.shape), geometry.voxel_size
    phi0 = smooth_random_field(shape, vs, rng, scales_mm=(30.0,), weights=(1.0,))
    m0 = (0.05 + 0.95 * mask) * (1 + 0.1 * smooth_random_field(shape, vs, rng, scales_mm=(3.0, 10.0)))
    r2s = float(rng.uniform(20.0, 40.0))
    phases, mags = [], []
    for t in te:
        ph = ppm_to_rad(total_field, te=float(t), b0=b0) + phi0
        s = torch.polar(m0 * float(np.exp(-float(t) * r2s)), ph)
        n = torch.complex(torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)),
                          torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))) / snr
        s = s + n
        phases.append(torch.angle(s))
        mags.append(s.abs())
    return torch.stack(phases), torch.stack(mags)


def simulate(
    chi: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    seed=None,
    *,
    noise_std: float | Sequence[float] = 0.0,
    snr: float | None = None,
    imperfections: dict | None = None,
    weight: torch.Tensor | None = None,
    pad=True,
    dtype: torch.dtype = torch.float32,
    te: Sequence[float] = (0.004, 0.009, 0.014, 0.019, 0.024),
    b0: float = 3.0,
) -> Simulation:
    """Simulate the measured local field of ``chi``.

    Args:
        chi: (X, Y, Z) susceptibility in ppm (zero outside the region of local sources).
        mask: (X, Y, Z) 0/1 region where the field is known; the field is truncated to it.
        geometry: voxel size (mm) and B0 direction (voxel axes); its shape must match ``chi``.
        seed: int, SeedSequence or numpy Generator for noise and imperfections.
        noise_std: std (ppm) of the Gaussian noise added to the field, or a (low, high) range
            to draw it from uniformly.
        snr: instead of ``noise_std``: noise std = std of the clean field inside the mask / snr
            (so ``snr=20`` means the field's spread is 20x the noise; None: use ``noise_std``).
        imperfections: switches (see the module docstring and :data:`DEFAULT_IMPERFECTIONS`).
        weight: (X, Y, Z) weight of the non-dipolar perturbation (e.g. WM probability).
        pad: zero padding of the dipole convolution (see :func:`qsmnet.physics.forward_field`).
        dtype: FFT precision (float64 for exactness tests and the benchmark set).
        te: echo times (s) for ``multi_echo``.
        b0: field strength (T) for ``multi_echo``.

    Returns:
        :class:`Simulation`; the field is
        ``(forward_field(chi) + noise + imperfections) * mask`` (float32).
    """
    rng = as_rng(seed)
    sw = {**DEFAULT_IMPERFECTIONS, **(imperfections or {})}
    unknown = set(sw) - set(DEFAULT_IMPERFECTIONS)
    if unknown:
        raise ValueError(
            f"unknown imperfections {sorted(unknown)}; choose from {sorted(DEFAULT_IMPERFECTIONS)}")
    if tuple(chi.shape) != geometry.shape or tuple(mask.shape) != geometry.shape:
        raise ValueError(
            f"chi {tuple(chi.shape)} / mask {tuple(mask.shape)} do not match geometry {geometry.shape}")
    applied = {k: _switch(sw[k], rng) for k in _ALIGNED}
    shape, vs = geometry.shape, geometry.voxel_size
    chi = chi.to(torch.float32)
    mask = (mask > 0).to(torch.float32)
    clean = forward_field(chi, vs, geometry.b0_dir, pad=pad, dtype=dtype).to(torch.float32)
    inside = mask > 0
    if snr is not None:
        spread = float(clean[inside].std()) if inside.sum() > 1 else float(clean.std())
        sigma = spread / float(snr)
    elif isinstance(noise_std, (tuple, list)):
        sigma = float(rng.uniform(float(noise_std[0]), float(noise_std[1])))
    else:
        sigma = float(noise_std)
    noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) * sigma
    field = clean + noise
    out_mask = mask
    if applied["background_residual"]:
        field = field + polynomial_field(mask, vs, rng, float(rng.uniform(0.005, 0.03)))
    if applied["nondipolar"]:
        w = mask if weight is None else weight.to(torch.float32) * mask
        pert = smooth_random_field(shape, vs, rng, scales_mm=(2.0, 5.0))
        field = field + float(rng.uniform(0.002, 0.01)) * w * pert
    if applied["edge_errors"]:
        out_mask = _erode(mask, int(rng.integers(0, 3)))
        band = out_mask - _erode(out_mask, int(rng.integers(1, 4)))
        err = smooth_random_field(shape, vs, rng, scales_mm=(1.5, 4.0))
        field = field + float(rng.uniform(0.01, 0.05)) * band * err
    if applied["external_background"]:
        ext = float(rng.uniform(0.5, 3.0)) * smooth_random_field(shape, vs, rng, scales_mm=(5.0, 20.0))
        field = field + forward_field(ext * (1.0 - mask), vs, geometry.b0_dir, pad=pad, dtype=dtype).float()
    applied["bfr_remnant"] = bool(sw["bfr_remnant"]) and _switch(sw["bfr_remnant"], rng)
    if applied["bfr_remnant"]:
        field = field + bfr_remnant(mask, vs, rng)
    phase = magnitude = None
    if applied["multi_echo"]:
        phase, magnitude = multi_echo_signal(field * out_mask, out_mask, geometry, rng, te, b0=b0)
    return Simulation(
        field=(field * out_mask).contiguous(),
        mask=out_mask,
        chi=chi,
        noise=noise,
        clean_field=clean,
        geometry=geometry,
        noise_std=sigma,
        phase=phase,
        magnitude=magnitude,
        te=tuple(float(t) for t in te) if applied["multi_echo"] else (),
        applied=applied,
    )
