"""``qsmnet predict`` end to end on a tiny volume: output grid, sidecar, units, overrides, errors."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import qsm_forward

from qsmnet.cli.main import main
from qsmnet.physics import ppm_to_hz

N = 15


def predict(field, mask, out, *extra) -> int:
    return main(["predict", str(field), "--mask", str(mask), "-o", str(out), *map(str, extra)])


@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(0)
    x = np.stack(np.meshgrid(*[np.arange(N) - N // 2] * 3, indexing="ij")).astype(float)
    mask = ((x / (0.42 * N)) ** 2).sum(0) < 1
    chi = 0.1 * np.exp(-((x - rng.uniform(-2, 2, (3, 1, 1, 1))) ** 2).sum(0) / 8.0) * mask
    field = (qsm_forward.generate_field(chi, mask) * mask).astype(np.float32)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [-7, -7, -7]
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("field", "mask", "hz", "mag", "field4d")}
    nib.save(nib.Nifti1Image(field, aff), paths["field"])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), paths["mask"])
    nib.save(nib.Nifti1Image(ppm_to_hz(field, 3.0).astype(np.float32), aff), paths["hz"])
    nib.save(nib.Nifti1Image((1.0 + mask).astype(np.float32), aff), paths["mag"])
    nib.save(nib.Nifti1Image(np.stack([field, field], -1), aff), paths["field4d"])
    return paths, aff, mask, tmp_path


def test_predict_writes_chi_on_input_grid_and_sidecar(case, capsys):
    paths, aff, mask, tmp = case
    out = tmp / "chi.nii.gz"
    rc = predict(paths["field"], paths["mask"], out, "--method", "tv", "--iterations", 20, "--lambda", "1e-4",
                 "--device", "cpu")  # fmt: skip
    assert rc == 0
    img = nib.load(out)
    np.testing.assert_allclose(img.affine, aff)
    chi = img.get_fdata()
    assert chi.shape == (N, N, N) and np.all(chi[~mask] == 0) and np.abs(chi[mask]).max() > 0.01
    side = json.loads((tmp / "chi.json").read_text())
    assert side["method"] == "tv" and side["parameters"] == {"lam": 1e-4, "iterations": 20, "tol": 1e-3,
                                                             "weight": "mask"}  # the parameters used
    assert side["lambda"] == 1e-4 and side["lambda_method"] == "fixed"
    assert side["iterations"] <= 20 and 0 <= side["residual"] < 1 and side["seconds"] >= 0
    assert side["device"] == "cpu" and side["b0_dir_source"] == "affine" and side["units_in"] == "ppm"


def test_units_hz_and_b0_override(case):
    paths, _, _, tmp = case
    a, b = tmp / "a.nii.gz", tmp / "b.nii.gz"
    assert predict(paths["field"], paths["mask"], a, "--method", "tkd") == 0
    assert predict(paths["hz"], paths["mask"], b, "--method", "tkd", "--units", "hz", "--b0", 3) == 0
    np.testing.assert_allclose(nib.load(b).get_fdata(), nib.load(a).get_fdata(), atol=1e-6)
    c = tmp / "c.nii.gz"
    rc = predict(
        paths["field"], paths["mask"], c, "--method", "tkd", "--b0-dir", 1, 0, 1, "--voxel-size", 1, 1, 2
    )
    assert rc == 0
    side = json.loads((tmp / "c.json").read_text())
    assert side["b0_dir_source"] == "override" and side["voxel_size"] == [1, 1, 2]
    assert np.abs(nib.load(c).get_fdata() - nib.load(a).get_fdata()).max() > 1e-3


def test_medi_with_magnitude(case):
    paths, _, _, tmp = case
    out = tmp / "m.nii.gz"
    rc = predict(
        paths["field"],
        paths["mask"],
        out,
        "--method",
        "medi",
        "--magnitude",
        paths["mag"],
        "--iterations",
        10,
    )
    assert rc == 0
    assert json.loads((tmp / "m.json").read_text())["parameters"]["magnitude"].endswith("mag.nii.gz")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--method", "tv", "--threshold", "0.2"], "does not take"),
        (["--method", "tkd", "--strong", "0.3"], "does not take"),
        (["--units", "hz"], "--b0"),
        (["--method", "tkd", "--magnitude", "MAG"], "magnitude"),
    ],
)
def test_user_errors_exit_2_without_output(case, capsys, extra, message):
    paths, _, _, tmp = case
    extra = [str(paths["mag"]) if e == "MAG" else e for e in extra]
    out = tmp / "x.nii.gz"
    assert predict(paths["field"], paths["mask"], out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_4d_field_and_empty_mask_rejected(case, capsys):
    paths, aff, _, tmp = case
    out = tmp / "x.nii.gz"
    assert predict(paths["field4d"], paths["mask"], out) == 2
    assert "3D" in capsys.readouterr().err
    empty = tmp / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((N, N, N), np.uint8), aff), empty)
    assert predict(paths["field"], empty, out) == 2
    assert "empty" in capsys.readouterr().err
    assert not out.exists()


# --- networks, units, geometry, warnings, bad inputs, many subjects (issue 6) -----------------------

TINY = {"_target_": "qsmnet.models.LPCNN", "iterations": 2, "features": 4, "depth": 2}


@pytest.fixture
def net_path(tmp_path):
    """Untrained tiny LPCNN weights (a Tikhonov start plus data-consistency steps: a real inversion)."""
    from qsmnet.models.io import build_network, save_weights

    return save_weights(build_network(TINY), TINY, tmp_path / "nets" / "tiny")


def blob_case(folder, tag, n=23, b0_dir=(0.0, 0.0, 1.0), affine=None, seed=5):
    """chi, mask and the qsm-forward field written as ``<tag>_field/_mask.nii.gz``."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(float)
    mask = ((x / (0.42 * n)) ** 2).sum(0) < 1
    chi = sum(0.1 * np.exp(-((x - c) ** 2).sum(0) / 6.0) for c in rng.uniform(-n / 5, n / 5, (5, 3, 1, 1, 1)))
    chi = (chi * mask).astype(np.float32)
    field = (qsm_forward.generate_field(chi, mask, B0_dir=list(b0_dir)) * mask).astype(np.float32)
    aff = np.eye(4) if affine is None else affine
    nib.save(nib.Nifti1Image(field, aff), folder / f"{tag}_field.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), folder / f"{tag}_mask.nii.gz")
    return chi, mask, field


def nrmse_demeaned(est, truth, mask):
    e, t = est[mask] - est[mask].mean(), truth[mask] - truth[mask].mean()
    return float(np.linalg.norm(e - t) / np.linalg.norm(t))


def sidecar(out):
    return json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())


def test_network_end_to_end_sidecar_and_residual_map(case, net_path, capsys):
    paths, aff, mask, tmp = case
    out, res = tmp / "chi.nii.gz", tmp / "res.nii.gz"
    rc = predict(paths["field"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu",
                 "--residual-map", res)  # fmt: skip
    assert rc == 0
    img = nib.load(out)
    assert img.get_data_dtype() == np.float32 and img.shape == (N, N, N)
    np.testing.assert_allclose(img.affine, aff)
    side = sidecar(out)
    assert side["method"] == "tiny" and side["model"]["version"].startswith("sha256:")
    assert side["model"]["class"] == "LPCNN" and side["inference"]["mode"] == "whole"
    assert side["units_in"] == "ppm" and side["b0_dir_source"] == "affine" and side["b0_dir"] == [0, 0, 1]
    assert side["voxel_size"] == [1, 1, 1] and side["device"] == "cpu" and side["wall_seconds"] > 0
    assert side["warnings"] == [] and 0 < side["residual"] < 1
    # The residual map is M (D chi - f) under an independent forward model (qsm-forward, unpadded).
    chi = img.get_fdata()
    f = nib.load(paths["field"]).get_fdata()
    r = nib.load(res).get_fdata()
    expected = (qsm_forward.generate_field(chi, np.ones_like(mask)) - f) * mask
    np.testing.assert_allclose(r, expected, atol=2e-3 * np.abs(f).max())
    assert np.linalg.norm(r) / np.linalg.norm(f * mask) == pytest.approx(side["residual"], rel=1e-3)
    assert "residual" in capsys.readouterr().out


def test_three_unit_options_give_the_same_chi(tmp_path, net_path):
    from qsmnet.physics import ppm_to_hz, ppm_to_rad

    _, mask, field = blob_case(tmp_path, "u")
    nib.save(nib.Nifti1Image(ppm_to_hz(field, 3.0).astype(np.float32), np.eye(4)), tmp_path / "hz.nii.gz")
    rad = ppm_to_rad(field, te=0.02, b0=3.0).astype(np.float32)
    nib.save(nib.Nifti1Image(rad, np.eye(4)), tmp_path / "rad.nii.gz")
    m = tmp_path / "u_mask.nii.gz"
    runs = {
        "ppm": (tmp_path / "u_field.nii.gz", []),
        "hz": (tmp_path / "hz.nii.gz", ["--units", "hz", "--b0", 3]),
        "rad": (tmp_path / "rad.nii.gz", ["--units", "rad", "--te", 0.02, "--b0", 3]),
    }
    chis = {}
    for units, (f, extra) in runs.items():
        out = tmp_path / f"chi_{units}.nii.gz"
        assert predict(f, m, out, "--checkpoint", net_path, "--device", "cpu", *extra) == 0
        chis[units] = nib.load(out).get_fdata()
        assert sidecar(out)["units_in"] == units and sidecar(out)["warnings"] == []
    assert np.abs(chis["ppm"][mask]).max() > 0.01
    for units in ("hz", "rad"):
        np.testing.assert_allclose(chis[units], chis["ppm"], atol=1e-5)


def test_obliquity_only_in_the_affine_is_reconstructed_as_well_as_axial(tmp_path, net_path):
    from conftest import rotation_matrix

    rot = rotation_matrix((25.0, -15.0, 0.0))
    oblique = np.eye(4)
    oblique[:3, :3] = rot
    chi_a, mask, _ = blob_case(tmp_path, "ax")
    chi_o, _, _ = blob_case(tmp_path, "ob", b0_dir=rot.T @ [0, 0, 1], affine=oblique)
    scores = {}
    for tag, chi, extra in (("ax", chi_a, []), ("ob", chi_o, []), ("wrong", chi_o, ["--b0-dir", 0, 0, 1])):
        src = "ax" if tag == "ax" else "ob"
        out = tmp_path / f"{tag}.nii.gz"
        rc = predict(tmp_path / f"{src}_field.nii.gz", tmp_path / f"{src}_mask.nii.gz", out,
                     "--checkpoint", net_path, "--device", "cpu", *extra)  # fmt: skip
        assert rc == 0
        scores[tag] = nrmse_demeaned(nib.load(out).get_fdata(), chi, mask)
    side = sidecar(tmp_path / "ob.nii.gz")
    assert side["b0_dir_source"] == "affine" and side["b0_tilt_deg"] == pytest.approx(28.9, abs=0.1)
    # measured: axial 0.45, oblique 0.48, oblique read as axial 0.85
    assert scores["ob"] < 1.15 * scores["ax"]
    assert scores["wrong"] > 1.5 * scores["ob"]


def test_warnings_do_not_fail(case, net_path, capsys):
    paths, aff, mask, tmp = case
    out = tmp / "w.nii.gz"
    # An Hz map declared as ppm, B0 tilted beyond the training range, a voxel size outside it.
    rc = predict(paths["hz"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu",
                 "--b0-dir", 1, 0, 0.5, "--voxel-size", 1, 1, 4)  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    warns = sidecar(out)["warnings"]
    assert len(warns) == 3 and err.count("warning:") == 3
    assert "not ppm" in warns[0] and "63.4 deg" in warns[1] and "4 mm" in warns[2]
    full = tmp / "full.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((N, N, N), np.uint8), aff), full)
    assert predict(paths["field"], full, tmp / "f.nii.gz", "--method", "tkd", "--device", "cpu") == 0
    assert "covers 100%" in sidecar(tmp / "f.nii.gz")["warnings"][0]


def test_half_is_ignored_on_the_cpu_with_a_note(case, net_path, capsys):
    paths, _, _, tmp = case
    out = tmp / "h.nii.gz"
    assert (
        predict(paths["field"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu", "--half")
        == 0
    )
    assert "--half needs a CUDA device" in capsys.readouterr().err
    assert sidecar(out)["half"] is False


def test_refine_and_windows_from_the_cli(case, net_path):
    paths, _, mask, tmp = case
    a, b = tmp / "a.nii.gz", tmp / "b.nii.gz"
    assert predict(paths["field"], paths["mask"], a, "--checkpoint", net_path, "--device", "cpu",
                   "--refine", 3, "--refine-lr", 1e-3) == 0  # fmt: skip
    ref = sidecar(a)["refine"]
    assert ref["steps"] == 3 and ref["residual_after"] < ref["residual_before"]
    assert predict(paths["field"], paths["mask"], b, "--checkpoint", net_path, "--device", "cpu",
                   "--window", 12, "--overlap", 0.5) == 0  # fmt: skip
    inf = sidecar(b)["inference"]
    assert inf["mode"] == "windows" and inf["window"] == [12, 12, 12]


def _bad_inputs(paths, aff, tmp):
    """name -> (field, mask, out, message) for each kind of bad input."""
    f, m = paths["field"], paths["mask"]
    field = nib.load(f).get_fdata().astype(np.float32)
    corrupt = tmp / "corrupt.nii.gz"
    corrupt.write_bytes(nib.load(f).to_bytes()[:200])
    text = tmp / "field.txt"
    text.write_text("0 1 2\n")
    small = tmp / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((N, N, N - 1), np.uint8), aff), small)
    moved = tmp / "moved.nii.gz"
    shifted = aff.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(nib.load(m).get_fdata().astype(np.uint8), shifted), moved)
    nan = tmp / "nan.nii.gz"
    field[N // 2, N // 2, N // 2] = np.nan
    nib.save(nib.Nifti1Image(field, aff), nan)
    empty = tmp / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((N, N, N), np.uint8), aff), empty)
    out = tmp / "x.nii.gz"
    return {
        "missing": (tmp / "nope.nii.gz", m, out, "does not exist"),
        "corrupt": (corrupt, m, out, "corrupt"),
        "not nifti": (text, m, out, "not a NIfTI"),
        "mask shape": (f, small, out, "shape"),
        "mask affine": (f, moved, out, "affine differs"),
        "nan": (nan, m, out, "NaN or Inf"),
        "4d": (paths["field4d"], m, out, "3D"),
        "empty mask": (f, empty, out, "empty"),
        "no out dir": (f, m, tmp / "no" / "x.nii.gz", "does not exist"),
    }


BAD = [
    "missing",
    "corrupt",
    "not nifti",
    "mask shape",
    "mask affine",
    "nan",
    "4d",
    "empty mask",
    "no out dir",
]


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_one_line_exit_2_no_output(case, net_path, capsys, kind):
    paths, aff, _, tmp = case
    field, mask, out, message = _bad_inputs(paths, aff, tmp)[kind]
    capsys.readouterr()
    assert predict(field, mask, out, "--checkpoint", net_path, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not out.with_name("x.json").exists()


def test_existing_output_needs_force_and_bad_checkpoint(case, net_path, capsys):
    paths, _, _, tmp = case
    out = tmp / "x.nii.gz"
    out.write_bytes(b"keep me")
    assert predict(paths["field"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu") == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert (
        predict(paths["field"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu", "--force")
        == 0
    )
    bad = tmp / "bad.safetensors"
    bad.write_bytes(b"junk")
    bad.with_suffix(".json").write_text(json.dumps({"model": TINY}))
    fresh = tmp / "y.nii.gz"
    assert predict(paths["field"], paths["mask"], fresh, "--checkpoint", bad, "--device", "cpu") == 2
    assert "cannot load network weights" in capsys.readouterr().err and not fresh.exists()


def test_many_subjects_from_a_list_with_one_failure(case, net_path, capsys):
    paths, _, _, tmp = case
    (tmp / "out").mkdir()
    lst = tmp / "subjects.txt"
    lst.write_text(
        "field.nii.gz mask.nii.gz out/a.nii.gz\nmissing.nii.gz mask.nii.gz out/b.nii.gz\n"
        "hz.nii.gz mask.nii.gz out/c.nii.gz  # Hz, with a warning\n"
    )
    rc = main(
        ["predict", "--list", str(lst), "--checkpoint", str(net_path), "--device", "cpu", "--no-progress"]
    )
    assert rc == 1
    captured = capsys.readouterr()
    assert captured.err.count("error:") == 1 and "missing.nii.gz" in captured.err
    assert "2 of 3 subject(s) reconstructed, 1 failed" in captured.out
    assert (tmp / "out" / "a.nii.gz").is_file() and (tmp / "out" / "c.nii.gz").is_file()
    assert not (tmp / "out" / "b.nii.gz").exists()


def test_many_subjects_from_a_bids_folder(tmp_path, net_path, capsys):
    for sub in ("01", "02"):
        folder = tmp_path / "bids" / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        blob_case(folder, f"sub-{sub}", n=13)
        for kind, new in (("field", "Localfield"), ("mask", "mask")):
            (folder / f"sub-{sub}_{kind}.nii.gz").rename(folder / f"sub-{sub}_{new}.nii.gz")
    rc = main(["predict", "--bids", str(tmp_path / "bids"), "--checkpoint", str(net_path), "--device", "cpu"])
    assert rc == 0
    for sub in ("01", "02"):
        out = (
            tmp_path / "bids" / "derivatives" / "qsmnet" / f"sub-{sub}" / "anat" / f"sub-{sub}_Chimap.nii.gz"
        )
        assert out.is_file() and sidecar(out)["method"] == "tiny"
    assert "predict" in capsys.readouterr().err  # the progress bar


def test_default_method_without_shipped_weights_is_tv(case, tmp_path, monkeypatch, capsys):
    from qsmnet.models import io as mio

    monkeypatch.setattr(mio, "WEIGHTS_DIR", tmp_path / "none")
    paths, _, _, tmp = case
    out = tmp / "d.nii.gz"
    assert predict(paths["field"], paths["mask"], out, "--device", "cpu", "--iterations", 5) == 0
    assert "no network weights are shipped" in capsys.readouterr().err
    assert sidecar(out)["method"] == "tv"


@pytest.mark.skipif(not __import__("qsmnet.models.io").models.io.available(), reason="no shipped weights")
def test_shipped_networks_run_and_default_only_when_ready(case):
    from qsmnet.inference.methods import default_method, default_ready
    from qsmnet.models.io import available

    paths, _, mask, tmp = case
    for name in available():
        out = tmp / f"{name}.nii.gz"
        assert predict(paths["field"], paths["mask"], out, "--device", "cpu", "--method", name) == 0
        side = sidecar(out)
        assert side["method"] == name and side["model"]["version"]
        assert np.all(nib.load(out).get_fdata()[~mask] == 0)
    ready = [n for n in available() if default_ready(n)]
    assert (default_method(quiet=True) in ready) if ready else default_method(quiet=True) == "tv"


# --- rough edges a new user hits (issue 18) ---------------------------------------------------------


def _rad_field(case):
    from qsmnet.physics import ppm_to_rad

    paths, aff, _, tmp = case
    rad = ppm_to_rad(nib.load(paths["field"]).get_fdata(), te=0.02, b0=3.0).astype(np.float32)
    nib.save(nib.Nifti1Image(rad, aff), tmp / "rad.nii.gz")
    return tmp / "rad.nii.gz"


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--te", "20", "--b0", "3"], "--te: te = 20 is not an echo time in seconds"),  # ms, not s
        (["--te", "0.02", "--b0", "3000"], "--b0: b0 = 3000 is not a field strength in tesla"),  # mT
        (["--te", "0.02", "--b0", "127.7e6"], "looks like Hz"),
        (["--te", "0.02"], "--units rad needs --b0"),
    ],
)
def test_wrong_te_or_b0_units_are_refused_in_one_line(case, capsys, flags, expected):
    paths, _, _, tmp = case
    out = tmp / "x.nii.gz"
    assert predict(_rad_field(case), paths["mask"], out, "--method", "tkd", "--units", "rad", *flags) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_b0_and_te_ignored_for_ppm_input_warn(case, capsys):
    paths, _, _, tmp = case
    a = tmp / "a.nii.gz"
    assert predict(paths["field"], paths["mask"], a, "--method", "tkd", "--b0", 3, "--te", 0.02) == 0
    err = capsys.readouterr().err
    assert "warning: b0 and te are not used for a field in ppm" in err
    b = tmp / "b.nii.gz"
    hz = ["--units", "hz", "--b0", 3, "--te", 0.02]
    assert predict(paths["hz"], paths["mask"], b, "--method", "tkd", *hz) == 0
    err = capsys.readouterr().err
    assert "te is not used for a field in hz" in err and "b0 and" not in err
    assert "ignored" in " ".join(sidecar(tmp / "b.nii.gz")["warnings"])


def test_sidecar_records_what_was_run(case):
    from qsmnet import __version__

    paths, _, _, tmp = case
    rad, out = _rad_field(case), tmp / "chi.nii.gz"
    flags = ["--units", "rad", "--te", 0.02, "--b0", 3, "--device", "cpu"]
    assert predict(rad, paths["mask"], out, "--method", "tv", "--iterations", 5, *flags) == 0
    side = sidecar(out)
    assert side["qsmnet_version"] == __version__ and side["created_utc"]
    assert side["method"] == "tv" and side["kind"] == "solver"
    assert side["MagneticFieldStrength"] == 3 and side["EchoTime"] == 0.02 and side["units_in"] == "rad"
    assert side["parameters"]["iterations"] == 5 and side["iterations"] <= 5
    assert isinstance(side["lambda"], float) and side["lambda"] > 0 and side["lambda_method"] == "model"
    assert side["parameters"]["lam"] == side["lambda"]  # the λ chosen by 'auto', not the word
    import hashlib

    for role, p in (("field", rad), ("mask", paths["mask"])):
        assert side["inputs"][role]["path"] == str(p.resolve())
        assert side["inputs"][role]["sha256"] == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    assert side["device"] == "cpu" and side["seconds"] >= 0


def test_network_sidecar_has_the_weights_hash(case, net_path):
    import hashlib

    paths, _, _, tmp = case
    out = tmp / "n.nii.gz"
    assert predict(paths["field"], paths["mask"], out, "--checkpoint", net_path, "--device", "cpu") == 0
    side = sidecar(out)
    assert side["kind"] == "network" and not side["experimental"]
    assert side["model"]["weights_sha256"] == "sha256:" + hashlib.sha256(net_path.read_bytes()).hexdigest()
    assert side["parameters"]["flips"] == 4 and side["parameters"]["window"] == "auto"


def test_network_dc_step_is_recorded_and_refused_for_solvers(case, net_path, capsys):
    paths, _, _, tmp = case
    out = tmp / "dc.nii.gz"
    args = ("--checkpoint", net_path, "--dc", "0.3", "--flips", "1")
    assert predict(paths["field"], paths["mask"], out, *args) == 0
    side = sidecar(out)
    assert side["parameters"]["dc"] == 0.3 and side["dc"]["mu"] == 0.3
    assert side["dc"]["residual_after"] < side["dc"]["residual_before"]
    auto = tmp / "dc_auto.nii.gz"
    args = ("--checkpoint", net_path, "--dc", "auto", "--flips", "1")
    assert predict(paths["field"], paths["mask"], auto, *args) == 0
    side = sidecar(auto)
    assert side["parameters"]["dc"] == "auto" and side["dc"]["auto"]["kappa"] > 0
    assert (side["dc"]["mu"] is None) == (side["dc"]["auto"]["rms_net"] <= side["dc"]["auto"]["target"])
    capsys.readouterr()
    typo = tmp / "typo.nii.gz"
    with pytest.raises(SystemExit) as exit_:  # argparse's own error: one line, status 2
        predict(paths["field"], paths["mask"], typo, "--checkpoint", net_path, "--dc", "big")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dc" in err[0] and not typo.exists()
    bad = tmp / "bad.nii.gz"
    assert predict(paths["field"], paths["mask"], bad, "--method", "tkd", "--dc", "0.3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not take parameter(s) dc" in err[0] and not bad.exists()


@pytest.mark.skipif("unet" not in __import__("qsmnet.models.io").models.io.available(), reason="no unet")
def test_experimental_network_warns(case, capsys):
    paths, _, _, tmp = case
    out = tmp / "u.nii.gz"
    assert predict(paths["field"], paths["mask"], out, "--method", "unet", "--flips", "1") == 0
    assert "warning: network 'unet' is experimental" in capsys.readouterr().err
    assert sidecar(out)["experimental"] is True
    assert predict(paths["field"], paths["mask"], tmp / "t.nii.gz", "--method", "tkd") == 0
    assert "experimental" not in capsys.readouterr().err


def test_methods_lists_every_method_with_defaults(capsys):
    from qsmnet.inference.methods import method_names

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in method_names():
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "threshold=0.25" in out and "solver" in out
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(method_names())
    assert all(r["kind"] in ("solver", "network") and r["description"] for r in rows)


def test_notes_go_through_logging_and_verbose_adds_debug(case, capsys):
    import logging

    paths, _, _, tmp = case
    args = [str(paths["field"]), "--mask", str(paths["mask"]), "-o", str(tmp / "v.nii.gz"), "--method", "tkd"]
    assert main(["-v", "predict", *args]) == 0
    logging.getLogger("qsmnet.test").debug("a debug line")
    err = capsys.readouterr().err
    assert "qsmnet: debug: a debug line" in err and err.count("a debug line") == 1
    main(["methods"])
    logging.getLogger("qsmnet.test").debug("hidden")
    assert "hidden" not in capsys.readouterr().err


@pytest.mark.parametrize("method", ["ilsqr", "tv"])
def test_lambda_choosers_on_the_command_line(case, method):
    # `--method ilsqr --lambda auto` used to end in a TypeError traceback
    paths, _, _, tmp = case
    out = tmp / f"{method}.nii.gz"
    rc = predict(paths["field"], paths["mask"], out, "--method", method, "--lambda", "auto",
                 "--iterations", 20, "--device", "cpu")  # fmt: skip
    assert rc == 0
    side = json.loads((tmp / f"{method}.json").read_text())
    assert side["lambda_method"] == "model"  # ilsqr: its damping (was "freq" on the iterate path)
    assert side["parameters"]["lam"] == side["lambda"]  # the value 'auto' chose


def test_output_into_a_closed_pipe_is_not_an_error():
    # `qsmnet methods | head -1` printed "error: [Errno 32] Broken pipe"
    import subprocess
    import sys

    code = "import sys, time; time.sleep(1); from qsmnet.cli.main import main; sys.exit(main(['methods']))"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader leaves before the listing is written
    err = p.stderr.read().decode()
    assert p.wait() == 0 and "Broken pipe" not in err and "error" not in err


def test_tikhonov_strong_sources_first_from_the_command_line(tmp_path):
    # a 1.3 ppm ball (500 mm^3) in a sphere: --strong fits it on its support, the sidecar says so
    n = 32
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(float)
    mask = ((x / (0.42 * n)) ** 2).sum(0) < 1
    ball = (x**2).sum(0) <= 25
    chi = (1.3 * ball + 0.05 * np.exp(-((x - 5) ** 2).sum(0) / 8.0)) * mask
    field = (qsm_forward.generate_field(chi, mask) * mask).astype(np.float32)
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("field", "mask")}
    nib.save(nib.Nifti1Image(field, np.eye(4)), paths["field"])
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), paths["mask"])
    reads = {}
    for name, extra in (("plain", ()), ("strong", ("--strong", "0.3"))):
        out = tmp_path / f"{name}.nii.gz"
        args = ("--method", "tikhonov", "--lambda", "0.02", *extra)
        assert predict(paths["field"], paths["mask"], out, *args) == 0
        side = json.loads(out.with_suffix("").with_suffix(".json").read_text())
        reads[name] = float(nib.load(out).get_fdata()[ball].mean())
        if extra:
            assert side["parameters"]["strong"] == 0.3 and side["strong_voxels"] > 0.5 * ball.sum()
        else:
            assert "strong_voxels" not in side
    assert reads["strong"] > 1.15 > reads["plain"], reads  # true 1.3


def test_ndi_sidecar_records_its_misfit_match(tmp_path):
    # NDI's auto damping is iLSQR's rule, lowered only where NDI's misfit exceeds iLSQR's: the sidecar
    # says what it tried, and the weight it reports is one of the tried ones
    from test_solvers import haematoma_phantom

    _, field, mask, _, _ = haematoma_phantom(model_error=0.3)
    paths = {k: tmp_path / f"{k}.nii.gz" for k in ("field", "mask")}
    nib.save(nib.Nifti1Image(field.numpy(), np.eye(4)), paths["field"])
    nib.save(nib.Nifti1Image(mask.numpy().astype(np.uint8), np.eye(4)), paths["mask"])
    out = tmp_path / "ndi.nii.gz"
    assert predict(paths["field"], paths["mask"], out, "--method", "ndi") == 0
    side = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    match = side["misfit_match"]
    assert side["lambda_method"] == "model" and 0 < match["target"] < 1
    assert side["lambda"] in [w for w, _ in match["path"]] and match["path"][0][0] >= side["lambda"]
