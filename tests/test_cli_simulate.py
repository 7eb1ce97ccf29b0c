"""`qsmnet simulate`: files, units, geometry in the affine, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmnet.cli.main import main
from qsmnet.io import load_nifti
from qsmnet.physics import forward_field


def test_simulate_shapes_writes_consistent_nifti(tmp_path, capsys):
    out = tmp_path / "sim"
    rc = main(["simulate", "--phantom", "shapes", "--shape", "17", "19", "15", "--voxel-size", "1", "1", "2",
               "--b0-dir", "0", "0.5", "0.866", "--seed", "3", "-o", str(out)])
    assert rc == 0
    f, c, m = (load_nifti(out / f"{n}.nii.gz") for n in ("field", "chi", "mask"))
    g = f.geometry
    assert g.shape == (17, 19, 15) and g.voxel_size == pytest.approx((1, 1, 2), abs=1e-5)
    b0 = np.array([0, 0.5, 0.866])
    np.testing.assert_allclose(g.b0_dir, b0 / np.linalg.norm(b0), atol=1e-5)
    expected = forward_field(c.data.astype(np.float64), g.voxel_size, g.b0_dir) * m.data
    np.testing.assert_allclose(f.data, expected, atol=1e-5)  # noise 0 by default
    side = json.loads((out / "field.json").read_text())
    assert side["Units"] == "ppm" and side["Phantom"] == "shapes"
    assert not (out / "labels.nii.gz").exists()


def test_simulate_brain_with_snr_and_labels(tmp_path):
    out = tmp_path / "b"
    assert main(["simulate", "--shape", "21", "--voxel-size", "3", "--snr", "10", "-o", str(out)]) == 0
    lab = load_nifti(out / "labels.nii.gz").data
    assert {8, 9}.issubset(set(np.unique(lab).astype(int)))
    side = json.loads((out / "field.json").read_text())
    assert side["SNR"] == 10 and side["NoiseStd_ppm"] > 0


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["--shape", "1", "2"], "one or three"),
        (["--b0-dir", "0", "0", "0"], "b0-dir"),
        (["--snr", "-1"], "snr"),
        (["--voxel-size", "0"], "voxel-size"),
    ],
)
def test_simulate_user_errors(tmp_path, capsys, argv, msg):
    rc = main(["simulate", "--phantom", "shapes", "--shape", "9", "-o", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err and err.count("\n") == 1


def test_simulate_refuses_to_overwrite(tmp_path, capsys):
    args = ["simulate", "--phantom", "shapes", "--shape", "9", "-o", str(tmp_path)]
    assert main(args) == 0
    assert main(args) == 2 and "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
