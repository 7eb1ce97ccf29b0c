"""``qsmnet qsm`` end to end on a tiny multi-echo volume: outputs, report, inputs, one-line errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from qsmnet.cli.main import main
from qsmnet.physics import forward_field, ppm_to_rad

N = (21, 23, 19)
TE = (0.004, 0.008, 0.012)
OUTS = ("chi.nii.gz", "localfield.nii.gz", "totalfield.nii.gz", "mask.nii.gz", "report.json")


@pytest.fixture
def case(tmp_path, oblique_affine):
    rng = np.random.default_rng(3)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in N], indexing="ij")).astype(float)
    inside = ((x / (0.4 * np.array(N))[:, None, None, None]) ** 2).sum(0) < 1
    chi = 0.1 * np.exp(-((x - 2) ** 2).sum(0) / 6.0) * inside
    field = forward_field(chi, (1.0, 1.5, 2.0), pad=True, dtype=torch.float64) + 0.02 * x[2] / N[2]
    mags, phases = [], []
    for t in TE:
        s = np.where(inside, 1.0, 0.03) * np.exp(-30 * t) * np.exp(1j * (0.4 + ppm_to_rad(field, t, 3.0)))
        s = s + (rng.standard_normal(N) + 1j * rng.standard_normal(N)) / 300
        mags.append(np.abs(s).astype(np.float32))
        phases.append(np.angle(s).astype(np.float32))
    p = {k: tmp_path / f"{k}.nii.gz" for k in ("phase", "mag", "mask", "int")}
    nib.save(nib.Nifti1Image(np.stack(phases, -1), oblique_affine), p["phase"])
    nib.save(nib.Nifti1Image(np.stack(mags, -1), oblique_affine), p["mag"])
    nib.save(nib.Nifti1Image(inside.astype(np.uint8), oblique_affine), p["mask"])
    codes = np.round((np.stack(phases, -1) + np.pi) / (2 * np.pi) * 4096).clip(0, 4095).astype(np.int16)
    nib.save(nib.Nifti1Image(codes, oblique_affine), p["int"])
    for e in range(3):
        p[f"ph{e}"] = tmp_path / f"ph_echo-{e + 1}.nii.gz"
        p[f"mg{e}"] = tmp_path / f"mg_echo-{e + 1}.nii.gz"
        nib.save(nib.Nifti1Image(phases[e], oblique_affine), p[f"ph{e}"])
        nib.save(nib.Nifti1Image(mags[e], oblique_affine), p[f"mg{e}"])
        (tmp_path / f"ph_echo-{e + 1}.json").write_text(
            json.dumps({"EchoTime": TE[e], "MagneticFieldStrength": 3})
        )
    return p, oblique_affine, inside, tmp_path


def qsm(p, out, *extra):
    args = ["qsm", "--phase", str(p["phase"]), "--mag", str(p["mag"]), "-o", str(out), "--quiet"]
    return main(args + [str(e) for e in extra])


def _te():
    return ["--te", *map(str, TE), "--b0", "3"]


def test_qsm_writes_maps_on_input_grid_and_complete_report(case):
    p, aff, inside, tmp = case
    out = tmp / "out"
    assert qsm(p, out, *_te(), "--radii", "3", "2") == 0
    assert sorted(f.name for f in out.iterdir()) == sorted(OUTS)
    for name in OUTS[:4]:
        img = nib.load(out / name)
        assert img.shape == N and np.allclose(img.affine, aff, atol=1e-5)
    chi = nib.load(out / "chi.nii.gz").get_fdata()
    mask = nib.load(out / "mask.nii.gz").get_fdata() > 0
    assert np.isfinite(chi).all() and mask.any() and not (mask & ~inside).any() and not chi[~mask].any()
    total = nib.load(out / "totalfield.nii.gz").get_fdata()
    assert total[mask].std() > 0
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["steps"]] == ["mask", "echo_fit", "background", "inversion", "reference"]
    assert all("seconds" in s and "parameters" in s and "function" in s for s in rep["steps"])
    assert set(rep["versions"]) == {"qsmnet", "torch", "numpy", "scipy", "skimage"}
    assert rep["inputs"]["te_s"] == list(TE) and rep["inputs"]["b0_t"] == 3.0
    # the default inversion: the default network under its guard (TV when it flags), or TV
    from qsmnet.inference import DEFAULT_METHOD

    assert rep["method"] == DEFAULT_METHOD
    inv = rep["steps"][3]
    assert DEFAULT_METHOD == "tv" or inv["guard"]["returned"] in (DEFAULT_METHOD, "tv")
    assert rep["steps"][2]["parameters"] == {"radii_mm": [3.0, 2.0]}


def test_qsm_per_echo_files_sidecars_integer_codes_and_given_mask(case):
    p, aff, inside, tmp = case
    per_echo = [
        "--phase",
        *[str(p[f"ph{e}"]) for e in range(3)],
        "--mag",
        *[str(p[f"mg{e}"]) for e in range(3)],
    ]
    a, b, c = tmp / "a", tmp / "b", tmp / "c"
    assert main(["qsm", *per_echo, "-o", str(a), "--radii", "3", "2", "--method", "tkd", "--quiet"]) == 0
    rep = json.loads((a / "report.json").read_text())
    assert rep["inputs"]["te_s"] == list(TE) and rep["inputs"]["b0_t"] == 3.0  # from the sidecars
    ints = dict(p, phase=p["int"])
    assert qsm(ints, b, *_te(), "--radii", "3", "2", "--method", "tkd", "--mask", p["mask"]) == 0
    assert main(["qsm", "--phase", str(p["phase"]), "--mask", str(p["mask"]), "-o", str(c), *_te(),
                 "--radii", "3", "2", "--method", "tkd", "--quiet"]) == 0  # fmt: skip
    ta, tb, tc = (nib.load(d / "totalfield.nii.gz").get_fdata() for d in (a, b, c))
    m = inside & (ta != 0)  # run a's computed mask is 3 mm inside the object's edge (edge_mm)
    assert m.sum() > 0.4 * inside.sum()
    assert np.abs(tb - ta)[m].max() < 2e-3  # 12-bit codes: quantisation of 2 pi / 4096 only
    assert np.abs(tc - ta)[m].max() < 5e-3  # no magnitude: equal weights, same field
    assert json.loads((b / "report.json").read_text())["inputs"]["mask_given"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--te", "0.004", "0.008", "--b0", "3"], "3 phase echo(es) but 2 echo time(s)"),
        (["--te", "4", "8", "12", "--b0", "3"], "look like milliseconds"),
        (["--te", "0.004", "0.008", "0.012"], "no field strength"),
        ([], "no echo times"),
    ],
)
def test_qsm_one_line_errors_for_echo_times(case, capsys, extra, message):
    p, _, _, tmp = case
    assert qsm(p, tmp / "out", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("qsmnet qsm: error:")
    assert not (tmp / "out").exists()


def test_qsm_one_line_errors_for_inputs(case, capsys, tmp_path):
    p, aff, inside, tmp = case
    mag2 = tmp / "mag2.nii.gz"
    nib.save(nib.Nifti1Image(nib.load(p["mag"]).get_fdata()[..., :2].astype(np.float32), aff), mag2)
    shifted = aff.copy()
    shifted[0, 3] += 5
    magx = tmp / "magx.nii.gz"
    nib.save(nib.Nifti1Image(nib.load(p["mag"]).get_fdata().astype(np.float32), shifted), magx)
    te3 = ["--te", *map(str, TE), "--b0", "3"]
    cases = [
        (["--phase", str(p["phase"]), "--mag", str(mag2), *te3], "3 phase echo(es) but 2 magnitude"),
        (["--phase", str(p["phase"]), "--mag", str(magx), *te3], "not on the phase's grid"),
        (["--phase", str(p["phase"]), *te3], "no magnitude given"),
        (["--phase", str(p["ph0"]), "--mag", str(p["mg0"]), *te3], "single 3D volume but 3 echo times"),
        (
            ["--phase", str(p["ph0"]), str(p["ph1"]), "--mag", str(p["mg0"])],
            "2 phase echo(es) but 1 magnitude",
        ),
    ]
    for argv, message in cases:
        assert main(["qsm", *argv, "-o", str(tmp / "out")]) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (message, err)
    assert not (tmp / "out").exists()


def test_qsm_existing_output_and_no_partial_output(case, capsys, monkeypatch):
    p, _, _, tmp = case
    out = tmp / "out"
    assert qsm(p, out, *_te(), "--radii", "3", "2", "--method", "tkd") == 0
    assert qsm(p, out, *_te(), "--radii", "3", "2", "--method", "tkd") == 2
    assert "already holds" in capsys.readouterr().err
    assert qsm(p, out, *_te(), "--radii", "3", "2", "--method", "tkd", "--force") == 0

    import qsmnet.io

    calls = []
    real = qsmnet.io.save_nifti

    def failing(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(path, *a, **k)

    monkeypatch.setattr(qsmnet.io, "save_nifti", failing)
    new = tmp / "new"
    assert qsm(p, new, *_te(), "--radii", "3", "2", "--method", "tkd") == 2
    assert "disk full" in capsys.readouterr().err and len(calls) == 3
    assert not new.exists() and not [f for f in tmp.iterdir() if f.name.startswith(".new")]


def test_qsm_bids(case, capsys):
    p, aff, _, tmp = case
    anat = tmp / "bids" / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    for e in range(3):
        for part, key in (("phase", "ph"), ("mag", "mg")):
            name = f"sub-01_ses-1_echo-{e + 1}_part-{part}_MEGRE"
            (anat / f"{name}.nii.gz").write_bytes(p[f"{key}{e}"].read_bytes())
            (anat / f"{name}.json").write_text(json.dumps({"EchoTime": TE[e], "MagneticFieldStrength": 3.0}))
    assert main(["qsm", "--bids", str(tmp / "bids"), "--radii", "3", "2", "--method", "tkd", "--quiet"]) == 0
    out = tmp / "bids" / "derivatives" / "qsmnet" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1"
    assert sorted(f.name for f in out.iterdir()) == sorted(OUTS)
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["files"]["phase"]) == 3 and rep["inputs"]["te_s"] == list(TE)
    assert "1 of 1 run(s) processed" in capsys.readouterr().out


def test_run_qsm_pdf_single_echo_and_checks(case):
    from qsmnet.errors import QSMNetError
    from qsmnet.inference import run_qsm
    from qsmnet.io import load_nifti

    p, _, inside, _ = case
    ph, mg = load_nifti(p["phase"]), load_nifti(p["mag"])
    phase, mag, g = np.moveaxis(ph.data, -1, 0), np.moveaxis(mg.data, -1, 0), ph.geometry
    r = run_qsm(
        phase, mag, TE, 3.0, g, mask=inside, bfr="pdf", method="tkd", bfr_params={"pad": 8, "iterations": 20}
    )
    bg = r.report["steps"][2]
    assert bg["function"] == "qsmnet.phase.pdf" and bg["iterations"] > 0 and torch.equal(r.mask, r.brain_mask)
    one = run_qsm(
        phase[:1], mag[:1], TE[:1], 3.0, g, mask=inside, method="tkd", bfr_params={"radii_mm": (3.0,)}
    )
    both = (one.mask & r.mask).numpy()
    diff = (one.total_field.numpy() - r.total_field.numpy())[both]
    # one echo cannot tell the receiver offset (0.4 rad at TE1 = 0.125 ppm) from the field
    assert abs(diff.mean() - 0.4 / (2 * np.pi * 42.577478 * 3.0 * TE[0])) < 0.01 and diff.std() < 0.01
    with pytest.raises(QSMNetError, match="unknown unwrapping"):
        run_qsm(phase, mag, TE, 3.0, g, unwrap="nope")
    with pytest.raises(QSMNetError, match="does not match the geometry"):
        run_qsm(phase, mag, TE, 3.0, g.with_(shape=(5, 5, 5)))


def test_qsm_network_options_reach_the_inversion_and_are_checked_first(case, capsys):
    """--flips/--dc/--fallback of a network run through the pipeline into the report; a network option
    given to a solver stops before any step, in one line, with no output folder."""
    p, _, inside, tmp = case
    out = tmp / "net"
    assert qsm(p, out, *_te(), "--radii", "3", "2", "--method", "unet", "--flips", "1", "--dc", "0.3",
               "--fallback", "tv") == 0  # fmt: skip
    inv = json.loads((out / "report.json").read_text())["steps"][3]
    assert inv["function"] == "unet" and inv["parameters"] == {"flips": 1, "dc": 0.3}
    assert inv["parameters_used"]["flips"] == 1 and inv["inference"]["flips"] == 1
    assert inv["dc"]["mu"] == 0.3 and inv["dc"]["residual_after"] < inv["dc"]["residual_before"]
    assert set(inv["guard"]) >= {"in_domain", "reasons", "returned"}
    said = capsys.readouterr().out  # the summary names the fallback when the guard used it
    assert ("unet flagged out of domain, tv returned" in said) == (inv["guard"]["returned"] == "tv"), said
    chi = nib.load(out / "chi.nii.gz").get_fdata()
    assert np.isfinite(chi).all() and chi[inside].std() > 0
    bad = tmp / "bad"
    assert qsm(p, bad, *_te(), "--method", "tv", "--dc", "0.3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not take parameter(s) dc" in err[0] and not bad.exists()
