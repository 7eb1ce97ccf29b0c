"""qsmnet.phase: unwrapping, echo fitting, background-field removal, masking, referencing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qsmnet.phase import (
    brain_mask,
    fit_field,
    pdf,
    reference,
    solve_poisson_neumann,
    unwrap_laplacian,
    unwrap_quality,
    vsharp,
    wrapped_laplacian,
)
from qsmnet.phase._util import wrap
from qsmnet.physics import Geometry, forward_field, hz_to_ppm

REAL = Path("/work/shared/realdata/multiecho_crop")
N = (23, 25, 21)


def _grid(shape=N):
    return np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in shape], indexing="ij")).astype(np.float64)


def _ellipsoid(shape=N, frac=0.42):
    x = _grid(shape)
    radii = np.array([frac * n for n in shape])[:, None, None, None]
    return ((x / radii) ** 2).sum(0) < 1


def _smooth_phase(rng, amplitude=25.0, shape=N):
    """Smooth phase spanning many wraps, with neighbour differences well below pi."""
    x = _grid(shape)
    c = rng.uniform(-3, 3, 3)[:, None, None, None]
    return amplitude * np.exp(-((x - c) ** 2).sum(0) / 90.0) + 0.3 * x[0] - 0.2 * x[2]


def _is_2pi_multiple(d, mask):
    k = d[mask] / (2 * np.pi)
    return np.abs(k - np.round(k)).max()


def test_unwrap_quality_is_exact_up_to_one_2pi_multiple(rng):
    phase = _smooth_phase(rng)
    mask = _ellipsoid()
    u = unwrap_quality(torch.tensor(wrap(torch.tensor(phase)).numpy()), mask).numpy()
    d = u - phase
    assert _is_2pi_multiple(d, mask) < 1e-4
    assert np.ptp(d[mask]) < 1e-4  # one constant over the (connected) mask
    assert np.all(u[~mask] == 0)


def test_unwrap_laplacian_matches_laplacian_and_recovers_phase(rng):
    vs = (1.0, 1.2, 0.9)
    phase = _smooth_phase(rng)
    wrapped = wrap(torch.tensor(phase, dtype=torch.float32))
    lap_true = wrapped_laplacian(torch.tensor(phase, dtype=torch.float32), vs)  # no wraps: plain FD
    lap_est = wrapped_laplacian(wrapped, vs)
    assert torch.allclose(lap_est, lap_true, atol=1e-3)
    u = unwrap_laplacian(wrapped, vs)
    assert torch.allclose(wrapped_laplacian(u, vs), lap_true, atol=2e-3)
    d = u.numpy().astype(np.float64) - phase
    assert np.ptp(d) < 1e-2 * np.ptp(phase)  # the true phase up to a constant
    uc = unwrap_laplacian(wrapped, vs, congruent=True).numpy()
    full = np.ones(N, bool)
    assert _is_2pi_multiple(uc - phase, full) < 1e-3 and np.ptp(uc - phase) < 1e-3


def test_poisson_dct_and_mirrored_fft_agree(rng):
    rhs = torch.tensor(rng.standard_normal(N), dtype=torch.float32)
    a = solve_poisson_neumann(rhs, (1.0, 2.0, 1.5), use_fft=False)
    b = solve_poisson_neumann(rhs, (1.0, 2.0, 1.5), use_fft=True)
    assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max()))
    assert abs(float(a.mean())) < 1e-5


def _multi_echo(rng, te, field_hz, phi0, r2s=30.0, snr=None):
    mags, phases = [], []
    for t in te:
        s = np.exp(-t * r2s) * np.exp(1j * (phi0 + 2 * np.pi * field_hz * t))
        if snr:
            s = s + (rng.standard_normal(N) + 1j * rng.standard_normal(N)) / snr
        mags.append(np.abs(s))
        phases.append(np.angle(s))
    return np.stack(phases).astype(np.float32), np.stack(mags).astype(np.float32)


@pytest.mark.parametrize("unwrap", ["quality", "laplacian"])
@pytest.mark.parametrize("te", [(0.004, 0.008, 0.012, 0.016, 0.020), (0.003, 0.0075, 0.011)])
def test_fit_field_recovers_field_and_offset(rng, unwrap, te):
    mask = _ellipsoid()
    field_hz = 8.0 * _smooth_phase(rng, amplitude=6.0) + 5.0  # up to ~60 Hz: many wraps at late echoes
    phi0 = 1.5 * np.sin(_grid()[1] / 7.0)
    phase, mag = _multi_echo(rng, te, field_hz, phi0)
    f, p0, std = fit_field(phase, mag, te, mask, unwrap=unwrap)
    assert np.abs(f.numpy() - field_hz)[mask].max() < 1e-2
    assert np.abs(wrap(p0 - torch.tensor(phi0, dtype=torch.float32)).numpy())[mask].max() < 1e-3
    assert np.all(f.numpy()[~mask] == 0) and std.shape == f.shape


def test_fit_field_noise_and_std_map(rng):
    te = (0.004, 0.008, 0.012, 0.016, 0.020)
    mask = _ellipsoid()
    field_hz = 40.0 * np.exp(-(_grid() ** 2).sum(0) / 60.0)
    phase, mag = _multi_echo(rng, te, field_hz, 0.7, snr=50.0)
    f, _, std = fit_field(phase, mag, te, mask)
    err = (f.numpy() - field_hz)[mask]
    # the reported standard error matches the actual scatter within 20 %
    assert 0.8 < err.std() / float(std[torch.from_numpy(mask)].mean()) < 1.2


def test_fit_field_single_echo_and_sim_signal(rng):
    from qsmnet.sim.forward import multi_echo_signal

    mask = _ellipsoid()
    g = Geometry(N)
    field_ppm = torch.tensor(0.15 * _smooth_phase(rng, amplitude=2.0), dtype=torch.float32)
    te = (0.005, 0.010, 0.015)
    phase, mag = multi_echo_signal(field_ppm, torch.tensor(mask, dtype=torch.float32), g, rng, te, b0=3.0,
                                   snr=1e4)  # fmt: skip
    f, _, _ = fit_field(phase, mag, te, mask)
    assert float((hz_to_ppm(f, 3.0) - field_ppm)[mask].abs().max()) < 2e-3
    one, p0, _ = fit_field(phase[:1] - phase[:1] + wrap(torch.tensor(2 * math.pi * 20.0 * 0.005)), None,
                           te[:1], mask)  # fmt: skip
    assert torch.allclose(one[mask], torch.full_like(one[mask], 20.0), atol=1e-3) and not p0.any()


def test_fit_field_rejects_bad_input():
    with pytest.raises(ValueError, match="echo time"):
        fit_field(np.zeros((3, *N)), None, (0.004, 0.008), np.ones(N))
    with pytest.raises(ValueError, match="positive"):
        fit_field(np.zeros((2, *N)), None, (0.0, 0.008), np.ones(N))


def _bfr_case():
    """Interior sources plus a strong air-like sphere just outside the mask."""
    shape = (31, 33, 29)
    x = _grid(shape)
    mask = _ellipsoid(shape, frac=0.43)
    chi = np.zeros(shape)
    for c, a in (((3, -2, 1), 0.1), ((-4, 3, -2), -0.08), ((0, 5, 3), 0.06)):
        chi += a * np.exp(-((x - np.array(c)[:, None, None, None]) ** 2).sum(0) / 4.5)
    chi *= mask
    air = (((x - np.array([0, 0, -17])[:, None, None, None]) ** 2).sum(0) < 36) & ~mask
    local = forward_field(chi, pad=True, dtype=torch.float64)
    total = forward_field(chi - 9.0 * air, pad=True, dtype=torch.float64)
    return torch.tensor(total, dtype=torch.float32), local, mask, Geometry(shape)


def _nrmse(a, ref, m):
    r = ref - ref[m].mean()
    return float(np.linalg.norm((a - r)[m]) / np.linalg.norm(r[m]))


def test_vsharp_removes_background_and_keeps_local_field():
    total, local, mask, _ = _bfr_case()
    radii = (6.0, 4.0, 2.0)
    background = total - torch.tensor(local, dtype=torch.float32)
    out, er = vsharp(total, mask, radii_mm=radii)
    loc, er_loc = vsharp(torch.tensor(local, dtype=torch.float32), mask, radii_mm=radii)
    bg, _ = vsharp(background, mask, radii_mm=radii)
    e = er.numpy()
    assert torch.equal(er, er_loc) and e.sum() < mask.sum() and not (e & ~mask).any()
    assert torch.allclose(out, loc + bg, atol=1e-3 * float(out.abs().max()))  # linear
    b = background.numpy()[e]
    # the air sphere's field (harmonic in the mask) is suppressed to < 3 % (the discrete sphere's
    # mean-value error), the interior sources' field is kept (edge-band deconvolution error)
    assert np.linalg.norm(bg.numpy()[e]) < 0.03 * np.linalg.norm(b - b.mean())
    assert _nrmse(loc.numpy(), local, e) < 0.35
    assert _nrmse(out.numpy(), local, e) < 0.03 * _nrmse(total.numpy(), local, e)


def test_pdf_recovers_local_field():
    total, local, mask, g = _bfr_case()
    info = {}
    out, m = pdf(total, mask, g, iterations=200, tol=1e-6, pad=16, info=info)
    assert torch.equal(m, torch.from_numpy(mask)) and info["iterations"] > 0
    assert _nrmse(out.numpy(), local, mask) < 0.4 < 0.005 * _nrmse(total.numpy(), local, mask)
    assert abs(float(out[m].mean())) < 1e-6


def _sphere_in_shell(rng, vs=2.0, n=32):
    """A head-like phantom (mm): brain, dark bone, a thin scalp, a neck blob and a bridge through the bone."""
    x = _grid((n, n, n)) * vs
    brain = ((x / np.array([14.0, 16.0, 13.0])[:, None, None, None]) ** 2).sum(0) < 1
    from scipy import ndimage

    d = ndimage.distance_transform_edt(~brain, sampling=vs)
    scalp = (d > 8.0) & (d <= 12.0)
    neck = ((x - np.array([0.0, 0.0, -28.0])[:, None, None, None]) ** 2).sum(0) < 10.0**2
    bridge = (x[0] ** 2 + x[1] ** 2 <= 2.0**2) & (x[2] < 0)  # a nerve-like link through the skull base
    tissue = (scalp | neck | bridge) & ~brain
    m0 = np.where(brain, 0.8, np.where(tissue, 0.6, np.where(d <= 8.0, 0.05, 0.0)))
    r2 = np.where(brain, 20.0, 30.0)
    te = np.array([0.004, 0.012, 0.02])[:, None, None, None]
    mag = m0 * np.exp(-te * r2) + 0.02 * np.abs(rng.standard_normal((3, n, n, n)))
    return mag, brain, (vs,) * 3


def _dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_brain_mask_strips_the_skull(rng):
    mag, brain, vs = _sphere_in_shell(rng)
    m = brain_mask(mag, vs, edge_mm=0.0).numpy()
    plain = brain_mask(mag, vs, strip_mm=0.0, edge_mm=0.0).numpy()
    assert _dice(m, brain) > 0.9  # 1 mm smoothing widens it by about one 2 mm voxel
    assert _dice(brain_mask(mag, vs, smooth_mm=0.0, edge_mm=0.0).numpy(), brain) > 0.98
    edged = brain_mask(mag, vs).numpy()  # default: 3 mm off the edge inside the field of view
    assert edged.sum() < m.sum() and not (edged & ~m).any()
    full = np.ones_like(mag)  # a crop inside the brain: the field of view's border does not erode
    assert brain_mask(full, vs).all()
    assert _dice(plain, brain) < 0.6  # the plain signal mask keeps scalp, neck and the bone inside them
    assert not m[brain.shape[0] // 2, brain.shape[1] // 2, 1]  # the neck is out
    brain_only = np.where(brain, mag, 0.02 * np.abs(rng.standard_normal(mag.shape)))
    stripped = brain_mask(brain_only, vs, edge_mm=0.0).numpy()
    assert _dice(stripped, brain_mask(brain_only, vs, strip_mm=0.0, edge_mm=0.0).numpy()) > 0.99


def test_brain_mask_and_reference(rng):
    inside = _ellipsoid()
    mag = np.where(inside, 1.0, 0.05) + 0.02 * rng.standard_normal(N)
    mag[11, 12, 10] = 0.0  # a dark hole inside (a vessel): filled
    mag[0, 0, 0] = 1.0  # bright speckle outside: dropped
    m = brain_mask(np.stack([mag, 0.7 * mag]), (1.0, 1.0, 1.0), smooth_mm=0.0, edge_mm=0.0)
    assert m.dtype == torch.bool and (m.numpy() != inside).sum() < 0.03 * inside.sum()
    assert m[11, 12, 10] and not m[0, 0, 0]
    er = brain_mask(mag, erode_mm=2.0, smooth_mm=0.0, edge_mm=0.0)
    assert er.sum() < m.sum() and not (er & ~m).any()
    chi = torch.tensor(rng.standard_normal(N), dtype=torch.float32) + 3.0
    r = reference(chi, m)
    assert abs(float(r[m].mean())) < 1e-5 and not r[~m].any()
    csf = torch.zeros(N, dtype=torch.bool)
    csf[10:13, 10:13, 9:12] = True
    assert abs(float(reference(chi, m, csf)[csf].mean())) < 1e-5
    with pytest.raises(ValueError):
        reference(chi, m, torch.zeros(N))


@pytest.mark.skipif(not REAL.is_dir(), reason="real multi-echo crop not available")
def test_real_multiecho_crop_unwraps_without_jumps():
    from qsmnet.io import load_nifti

    ph = load_nifti(REAL / "phase.nii.gz")
    mag = load_nifti(REAL / "mag.nii.gz")
    te = (0.004, 0.008, 0.012)
    p = np.moveaxis(ph.data, -1, 0)
    m = np.moveaxis(mag.data, -1, 0)
    vs = ph.geometry.voxel_size
    mask = brain_mask(m, vs)
    assert 0.2 < float(mask.float().mean()) <= 1.0
    f, _, std = fit_field(p, m, te, mask, voxel_size=vs)
    fn = f.numpy()
    mk = mask.numpy()
    assert np.isfinite(fn).all()
    # no 2 pi jumps: the field's neighbour differences stay below pi in phase at TE = dTE = 4 ms
    # (the unwrapped echo difference), bar a residue of the data on the edge slices (5 of ~3e5 pairs);
    # by TE3 true differences exceed pi on the steep edge slices z = 0, 1, so no such test there
    last = 2 * np.pi * fn * te[0]
    jumps, pairs = 0, 0
    for d in range(3):
        both = mk & np.roll(mk, -1, d)
        both[tuple(slice(-1, None) if a == d else slice(None) for a in range(3))] = False
        jumps += int((np.abs(np.roll(last, -1, d) - last)[both] > np.pi).sum())
        pairs += int(both.sum())
    assert jumps <= 1e-4 * pairs and pairs > 5e4
    # and its Laplacian is the one estimated from the wrapped phase (inside the eroded mask)
    lap = wrapped_laplacian(torch.tensor(last), vs).numpy()
    lap_w = wrapped_laplacian(wrap(torch.tensor(last)), vs).numpy()
    from scipy.ndimage import binary_erosion

    inner = binary_erosion(mk, iterations=1)
    assert np.abs(lap - lap_w)[inner].max() < 1e-3
    # the field agrees with the quality-unwrapped 1st echo difference (same data, another path)
    fl, _, _ = fit_field(p, m, te, mask, voxel_size=vs, unwrap="laplacian")
    assert np.median(np.abs(fl.numpy() - fn)[mk]) < 1.0
