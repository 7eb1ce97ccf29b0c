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
    assert side["method"] == "tv" and side["parameters"] == {"lam": 1e-4, "iterations": 20}
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
