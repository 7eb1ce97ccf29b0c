"""Whole-head phantom, tensor forward model, multi-echo acquisition, `qsmnet simulate --phantom head`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from qsmnet.physics import forward_field, ppm_to_hz
from qsmnet.sim.acquire import acquire, block_mean, head_fields
from qsmnet.sim.head import CHI_AIR, HEAD_LABELS, head_phantom
from qsmnet.sim.tensor import moment_field, tensor_field, tensor_moment

B_OBL = (0.0, math.sin(math.radians(35.0)), math.cos(math.radians(35.0)))


@pytest.fixture(scope="module")
def head():
    return head_phantom((47, 57, 47), (4.0, 4.0, 4.0), 3, haemorrhages=1)


def _blob(shape, rng):
    chi = torch.zeros(shape, dtype=torch.float64)
    c = [n // 2 for n in shape]
    chi[c[0] - 3 : c[0] + 4, c[1] - 2 : c[1] + 3, c[2] - 4 : c[2] + 3] = torch.from_numpy(
        rng.uniform(-1, 1, size=(7, 5, 7))
    )
    return chi


def test_isotropic_tensor_equals_scalar_model():
    rng = np.random.default_rng(0)
    chi = _blob((19, 21, 17), rng)
    t = chi[None, None] * torch.eye(3, dtype=torch.float64)[:, :, None, None, None]
    for b in ((0, 0, 1), B_OBL):
        f_t = tensor_field(t, (1.0, 1.2, 0.9), b, dtype=torch.float64)
        f_s = forward_field(chi, (1.0, 1.2, 0.9), b, pad=True, dtype=torch.float64)
        d = (f_t - f_t.mean()) - (f_s - f_s.mean())  # other padding: wrap-around differs slightly
        assert float(d.abs().max()) < 3e-2 * float(f_s.abs().max())
        # same padding: agreement to float64 precision
        from qsmnet.physics import DipoleOperator, Geometry
        from qsmnet.sim.tensor import padded_shape

        s = padded_shape(chi.shape)
        op = DipoleOperator(
            Geometry(chi.shape, (1.0, 1.2, 0.9), b),
            pad=tuple(p - n for p, n in zip(s, chi.shape, strict=True)),
            dtype=torch.float64,
        )
        assert float((f_t - op.A(chi)).abs().max()) < 1e-12


def test_tensor_field_matches_point_dipole_far_from_a_spherical_source():
    """Outside a spherically symmetric source with a uniform tensor the field is that of a point
    dipole of moment m = V chi_tensor b: f = (3 (m.r)(b.r)/r^2 - m.b) / (4 pi r^3)."""
    n, vs = 65, 1.0
    x = (torch.arange(n, dtype=torch.float64) - n // 2) * vs
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    prof = torch.exp(-r2 / (2 * 1.5**2))
    a = torch.tensor([[0.3, 0.1, -0.05], [0.1, -0.2, 0.15], [-0.05, 0.15, 0.4]], dtype=torch.float64)
    t = a[:, :, None, None, None] * prof
    b = torch.tensor(B_OBL, dtype=torch.float64)
    f = tensor_field(t, (vs,) * 3, B_OBL, pad=2 * n, dtype=torch.float64)
    m = float(prof.sum()) * vs**3 * (a @ b)
    rng = np.random.default_rng(1)
    for _ in range(20):
        d = rng.standard_normal(3)
        r = d / np.linalg.norm(d) * rng.uniform(9, 14)
        idx = tuple(int(round(v)) + n // 2 for v in r)
        rv = torch.tensor([(i - n // 2) * vs for i in idx], dtype=torch.float64)
        rn = rv.norm()
        expect = (3 * (m @ rv) * (b @ rv) / rn**2 - m @ b) / (4 * math.pi * rn**3)
        assert float(f[idx]) == pytest.approx(float(expect), rel=2e-3, abs=1e-7)


def test_field_is_linear_in_chi(head):
    vs, b = (4.0, 4.0, 4.0), B_OBL
    u = tensor_moment(head.brain_chi, b, head.aniso, head.fibre)
    f1 = moment_field(u, vs, b)
    for s in (0.5, 2.0):
        fs = moment_field(s * u, vs, b)
        assert float((fs - s * f1).abs().max()) < 1e-5 * float(f1.abs().max()) * max(s, 1)


def test_head_tissues_and_local_field_is_dipolar_up_to_the_modelled_part(head):
    lab = head.labels
    for k in ("white_matter", "grey_matter", "csf", "bone", "soft_tissue", "haemorrhage"):
        assert int((lab == HEAD_LABELS[k]).sum()) > 0, k
    assert float(head.chi[lab == 0].mean()) == pytest.approx(CHI_AIR)
    assert float(head.chi[lab == HEAD_LABELS["bone"]].mean()) < -1.0
    vs, b = (4.0, 4.0, 4.0), (0.0, 0.0, 1.0)
    _, local = head_fields(head, vs, b, dtype=torch.float64)
    m = head.mask > 0
    dip = forward_field(head.brain_chi.double(), vs, b, pad=True, dtype=torch.float64)
    dip = (dip - dip[m].mean()) * head.mask
    _, iso = head_fields(head, vs, b, anisotropy=False, micro=False, dtype=torch.float64)
    assert float((iso - dip).norm() / dip.norm()) < 1e-3  # no non-dipolar parts: the scalar model
    resid = float((local - dip).norm() / local.norm())
    assert 0.005 < resid < 0.5  # the modelled non-dipolar part is there, and not dominant


def test_tissue_scale_and_offset_textures(head):
    # the real-field profile's knobs (docs/realism.md): same seed, same head, only what they change
    prof = head_phantom((47, 57, 47), (4.0, 4.0, 4.0), 3, haemorrhages=1, tissue_scale=2.0,
                        offset_textures=[((6.0,), 0.004), ((12.0,), 0.002)])
    lab = head.labels
    assert torch.equal(prof.labels, lab) and torch.equal(prof.mask, head.mask)
    tissue = (lab == HEAD_LABELS["white_matter"]) | (lab == HEAD_LABELS["grey_matter"])
    torch.testing.assert_close(prof.chi[tissue], 2.0 * head.chi[tissue])
    fixed = (lab == HEAD_LABELS["haemorrhage"]) | (lab == HEAD_LABELS["bone"]) | (lab == 0)
    for k in ("caudate", "globus_pallidus", "putamen", "vein"):
        fixed |= lab == HEAD_LABELS[k]
    assert int(fixed.sum()) > 0 and torch.equal(prof.chi[fixed], head.chi[fixed])
    assert prof.info["tissue_scale"] == 2.0 and head.info["tissue_scale"] == 1.0
    # the offset: the sum of the textures (std 0.004 and 0.002, independent) in the tissue only
    std = float(prof.offset[tissue].std())
    assert 0.0035 < std < 0.0055 and float(prof.offset[~tissue].abs().max()) == 0.0


def test_tissue_contrast_sets_the_grey_white_difference(head):
    # a fixed contrast instead of a factor: every head ends with the same grey minus white matter chi
    lab = head.labels
    tissue = (lab == HEAD_LABELS["white_matter"]) | (lab == HEAD_LABELS["grey_matter"])
    for seed in (3, 4):
        ph = head_phantom((47, 57, 47), (4.0, 4.0, 4.0), seed, tissue_contrast=0.05)
        v = ph.info["values_ppm"]
        assert ph.info["tissue_scale"] * (v["grey_matter"] - v["white_matter"]) == pytest.approx(0.05)
        assert ph.info["tissue_contrast"] == 0.05
    ref = head_phantom((47, 57, 47), (4.0, 4.0, 4.0), 3, haemorrhages=1,
                       tissue_contrast=0.05, offset_textures=[((6.0,), 0.004), ((12.0,), 0.002)])
    k = ref.info["tissue_scale"]
    assert k != pytest.approx(1.0)
    torch.testing.assert_close(ref.chi[tissue], k * head.chi[tissue])
    # nuclei and veins scale on their own
    scaled = head_phantom((47, 57, 47), (4.0, 4.0, 4.0), 3, haemorrhages=1, nuclei_scale=2.0, vein_scale=3.0)
    for name, k in (("caudate", 2.0), ("globus_pallidus", 2.0), ("vein", 3.0), ("white_matter", 1.0)):
        sel = lab == HEAD_LABELS[name]
        assert int(sel.sum()) > 0
        torch.testing.assert_close(scaled.chi[sel], k * head.chi[sel])
    with pytest.raises(ValueError, match="not both"):
        head_phantom((47, 57, 47), (4.0, 4.0, 4.0), 3, tissue_scale=2.0, tissue_contrast=0.05)


def test_background_field_near_sinuses_at_3t():
    ph = head_phantom((64, 75, 64), (3.0, 3.0, 3.0), 5)
    total, _ = head_fields(ph, (3.0, 3.0, 3.0), (0, 0, 1))
    m = ph.mask > 0
    hz = ppm_to_hz(total - total[m].median(), 3.0)
    near = m & (
        torch.from_numpy(
            np.asarray(
                __import__("scipy.ndimage", fromlist=["x"]).binary_dilation(
                    (ph.labels == HEAD_LABELS["sinus"]).numpy(), iterations=4
                )
            )
        )
    )
    assert int(near.sum()) > 0
    spread = float(hz[near].max() - hz[near].min())
    assert 20.0 < spread < 800.0  # tens to a few hundred Hz across the tissue next to the sinuses
    assert 3.0 < float(hz[m].std()) < 100.0


def test_acquisition_wraps_and_fit_recovers_field(head):
    total, _ = head_fields(head, (4.0, 4.0, 4.0), (0, 0, 1))
    rng = np.random.default_rng(2)
    acq = acquire(total, head.m0, head.r2star, (4.0, 4.0, 4.0), rng, snr=1e4, factors=(1, 1, 2))
    assert acq.phase.shape == (5, 47, 57, 23) and float(acq.phase.abs().max()) <= math.pi + 1e-6
    m = block_mean(head.mask, (1, 1, 2)) == 1
    assert float(acq.noise_ppm[m].abs().median()) < 1e-3


def test_intravoxel_dephasing_matches_a_finer_simulation():
    # a field ramp of 0.3 ppm/mm along x (next to a sinus): on 2 mm voxels the analytic dephasing
    # must give the signal that 1/16 mm voxels, complex-averaged onto the same grid, give without it
    n, fine = 12, 16
    ramp = lambda vx, size: 0.3 * vx * (torch.arange(size, dtype=torch.float32) + 0.5)  # noqa: E731
    coarse_f = ramp(2.0, n)[:, None, None].expand(n, 4, 4).contiguous()
    fine_f = ramp(2.0 / fine, n * fine)[:, None, None].expand(n * fine, 4, 4).contiguous()
    kw = {"snr": 1e9, "te": (0.004, 0.012, 0.024)}

    def mag(field, vs, factors, dephasing):
        ones = torch.ones_like(field)
        a = acquire(field, ones, 0 * ones, vs, np.random.default_rng(0), factors=factors,
                    dephasing=dephasing, **kw)  # fmt: skip
        return a.magnitude[:, 2:-2, 1:-1, 1:-1]  # away from the ends, where gradient() is one-sided

    ref = mag(fine_f, (2.0 / fine, 2.0, 2.0), (fine, 1, 1), False)
    ours = mag(coarse_f, (2.0, 2.0, 2.0), (1, 1, 1), True)
    plain = mag(coarse_f, (2.0, 2.0, 2.0), (1, 1, 1), False)
    # span at 24 ms: 0.6 ppm x 2 pi x 127.7 Hz/ppm x 0.024 s = 11.6 rad: |sinc| = 0.08; at 4 ms 0.84
    assert torch.allclose(ours, ref, atol=2e-3)
    assert float(ref[2].max()) < 0.1 and float(ref[0].min()) > 0.8
    assert torch.allclose(plain, torch.ones_like(plain), atol=1e-5)  # without it: full signal


def test_against_qsm_forward():
    qf = pytest.importorskip("qsm_forward")
    rng = np.random.default_rng(4)
    chi = np.zeros((41, 39, 45))
    chi[10:31, 10:29, 11:34] = _blob((21, 19, 23), rng).numpy()  # zero border: little wrap-around
    b = np.array(B_OBL)
    ref = qf.generate_field(chi, voxel_size=[1.0, 1.0, 1.5], B0_dir=list(b))[10:31, 10:29, 11:34]
    ours = moment_field(tensor_moment(torch.from_numpy(chi), b), (1.0, 1.0, 1.5), b, dtype=torch.float64)
    c = ours.numpy()[10:31, 10:29, 11:34]
    # qsm-forward keeps D(0) = 1/3 and pads to exactly 2x: compare demeaned fields
    d = (c - c.mean()) - (ref - ref.mean())
    assert np.linalg.norm(d) < 2e-2 * np.linalg.norm(ref - ref.mean())
    assert np.abs(d).max() < 4e-2 * np.abs(ref).max()


def test_cli_simulate_head(tmp_path):
    from qsmnet.cli.main import main
    from qsmnet.io import load_nifti

    out = tmp_path / "h"
    rc = main(
        [
            "simulate",
            "--phantom",
            "head",
            "--shape",
            "31",
            "37",
            "21",
            "--voxel-size",
            "4",
            "4",
            "8",
            "--te",
            "0.005",
            "0.01",
            "0.015",
            "--tilt",
            "20",
            "--snr",
            "200",
            "--seed",
            "1",
            "--pathology",
            "--sim-voxel",
            "4",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    names = ("phase", "mag", "brainmask", "truth_chi", "truth_localfield", "totalfield")
    imgs = {n: load_nifti(out / f"{n}.nii.gz") for n in names}
    aff = imgs["phase"].affine
    for n, im in imgs.items():
        np.testing.assert_allclose(im.affine, aff, atol=1e-5, err_msg=n)
    assert imgs["phase"].data.shape == (31, 37, 21, 3) and imgs["mag"].data.shape == (31, 37, 21, 3)
    assert imgs["phase"].geometry.voxel_size == pytest.approx((4, 4, 8), abs=1e-4)
    assert imgs["phase"].geometry.tilt_deg == pytest.approx(20.0, abs=1e-3)
    p = json.loads((out / "params.json").read_text())
    assert p["EchoTime"] == [0.005, 0.01, 0.015] and p["MagneticFieldStrength"] == 3.0
    assert p["Pathology"] is True and p["Profile"] == "generator" and p["IntravoxelDephasing"] is True
    # the real-field profile: same head and noise draw, stronger grey/white contrast, SNR 21
    real = tmp_path / "r"
    args = ["simulate", "--phantom", "head", "--shape", "31", "37", "21", "--voxel-size", "4", "4", "8",
            "--sim-voxel", "4", "--seed", "1"]
    assert main([*args, "-o", str(tmp_path / "g")]) == 0
    assert main([*args, "--profile", "real-field", "-o", str(real)]) == 0
    q = json.loads((real / "params.json").read_text())
    assert q["Profile"] == "real-field" and q["SNR"] == 21.0
    wm = load_nifti(real / "brainmask.nii.gz").data > 0
    g_chi, r_chi = (load_nifti(d / "truth_chi.nii.gz").data[wm] for d in (tmp_path / "g", real))
    # grey/white matter dominate the median (bone enters the brain mask's edge voxels at 4 x 4 x 8 mm):
    # scaled by the factor that brings this head's drawn contrast to the profile's
    from qsmnet.sim.head import REAL_FIELD_PROFILE

    k = head_phantom((31, 37, 42), (4.0, 4.0, 4.0), 1, **REAL_FIELD_PROFILE).info["tissue_scale"]
    ratio = float(np.median(np.abs(r_chi))) / float(np.median(np.abs(g_chi)))
    assert abs(k - 1.0) > 0.05 and ratio == pytest.approx(k, rel=0.1)


def test_benchmark_v2_unknown_profile_is_refused(tmp_path):
    from qsmnet.errors import QSMNetError
    from qsmnet.phase import vsharp
    from qsmnet.sim.benchmark_v2 import make_benchmark_v2

    with pytest.raises(QSMNetError, match="unknown head profile 'patient'"):
        make_benchmark_v2(tmp_path / "b", vsharp, profile="patient")
    assert not (tmp_path / "b").exists()


def test_cli_simulate_profile_is_for_heads(tmp_path, capsys):
    from qsmnet.cli.main import main

    rc = main(["simulate", "--phantom", "brain", "--shape", "16", "--profile", "real-field",
               "-o", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "--profile real-field is for --phantom head" in err
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())


def test_benchmark_v2_small(tmp_path):
    from qsmnet.data import load_benchmark
    from qsmnet.phase import vsharp
    from qsmnet.sim.benchmark_v2 import make_benchmark_v2
    from qsmnet.sim.head import REAL_FIELD_PROFILE, REAL_FIELD_SNR

    path = make_benchmark_v2(
        tmp_path,
        vsharp,
        head_shape=(47, 57, 47),
        head_mm=4.0,
        hires_shape=(31, 31, 31),
        hires_mm=3.0,
        tiers=("realistic", "hires"),
    )
    man = json.loads(path.read_text())
    assert len(man["cases"]) == 7 and {e["tier"] for e in man["cases"].values()} == {"realistic", "hires"}
    # the set's heads use the real-field profile (docs/realism.md) and its SNR
    assert man["profile"] == "real-field" and man["snr"] == REAL_FIELD_SNR
    assert man["profile_settings"]["tissue_contrast"] == REAL_FIELD_PROFILE["tissue_contrast"]
    assert all(e["snr"] == REAL_FIELD_SNR for e in man["cases"].values())
    cases = dict(load_benchmark(tmp_path))
    s = cases["head1_axial_1x1x2"]
    assert s.geometry[0].voxel_size == pytest.approx((4, 4, 8), abs=1e-4)
    assert cases["head1_oblique45_1mm"].geometry[0].tilt_deg == pytest.approx(45.0, abs=1e-3)
    for name, e in man["cases"].items():
        assert 0.0 < e["unexplained"] < 1.5, name
        assert float(cases[name].mask.sum()) > 0


def _rms_laplacian_in_brain(field: torch.Tensor, mask: torch.Tensor, erode: int = 3) -> float:
    from scipy import ndimage

    m = ndimage.binary_erosion(mask.numpy() > 0, iterations=erode)
    f = field.double().numpy()
    lap = -6.0 * f
    for ax in range(3):
        lap = lap + np.roll(f, 1, ax) + np.roll(f, -1, ax)
    return float(np.sqrt((lap[m] ** 2).mean()))


@pytest.mark.slow
def test_oblique_background_is_harmonic_in_the_brain_with_bandlimit():
    # The background (total - local) has no source in the brain, so its discrete Laplacian there
    # must be ~0. With B0 at 45 deg the sharp air edge rings through the discrete kernel (the old
    # code: > 10x the axial level); band-limiting the extracerebral source brings it to the axial
    # level, and the brain's own field (the truth) is untouched.
    ph = head_phantom((64, 75, 64), (3.0, 3.0, 3.0), 5)
    vs, t = (3.0, 3.0, 3.0), math.radians(45.0)
    axial = (0.0, 0.0, 1.0)
    obl = (0.0, math.sin(t), math.cos(t))
    tot_a, loc_a = head_fields(ph, vs, axial, dtype=torch.float64)
    ref = _rms_laplacian_in_brain(tot_a - loc_a, ph.mask)
    tot_s, loc_s = head_fields(ph, vs, obl, dtype=torch.float64)
    sharp = _rms_laplacian_in_brain(tot_s - loc_s, ph.mask)
    tot_b, loc_b = head_fields(ph, vs, obl, bandlimit=0.7, dtype=torch.float64)
    band = _rms_laplacian_in_brain(tot_b - loc_b, ph.mask)
    assert sharp > 10 * ref
    assert band < 2.5 * ref
    assert torch.equal(loc_b, loc_s)
    # the background keeps its size: band-limiting removes ringing, not the sinus field
    m = ph.mask > 0
    assert float((tot_b - loc_b)[m].std()) == pytest.approx(float((tot_s - loc_s)[m].std()), rel=0.2)
