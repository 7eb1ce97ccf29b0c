"""``qsmnet info``: reported geometry and values, --json, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from qsmnet.cli.main import main
from qsmnet.io import save_nifti
from qsmnet.physics import b0_dir_from_affine


@pytest.fixture
def oblique_file(tmp_path, smooth_volume, oblique_affine):
    vol = smooth_volume.copy()
    vol[:3] = 0.0  # a zero region outside the "brain"
    return save_nifti(tmp_path / "sub-01_Localfield.nii.gz", vol, oblique_affine), vol


def test_info_json_reports_geometry_from_affine(oblique_file, oblique_affine, capsys):
    path, vol = oblique_file
    assert main(["info", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == list(vol.shape)
    assert info["dtype"] == "float32"
    np.testing.assert_allclose(info["voxel_size_mm"], [1.0, 1.5, 2.0], atol=1e-5)
    b0 = np.array(b0_dir_from_affine(oblique_affine))
    np.testing.assert_allclose(info["b0_dir_voxel"], b0, atol=1e-5)
    assert info["b0_tilt_deg"] == pytest.approx(np.degrees(np.arccos(abs(b0[2]))), abs=1e-3)
    assert info["oblique"] is True
    v32 = vol.astype(np.float32)
    assert info["values"]["min"] == pytest.approx(float(v32.min()))
    assert info["values"]["max"] == pytest.approx(float(v32.max()))
    nz = v32[v32 != 0]
    assert info["nonzero_voxels"] == nz.size
    assert info["values_nonzero"]["mean"] == pytest.approx(float(nz.mean()), rel=1e-5)
    assert info["values"]["mean"] == pytest.approx(float(v32.mean()), rel=1e-5)
    assert info["guessed_units"] == "ppm"


def test_info_text_on_axial_file(tmp_path, capsys):
    aff = np.diag([0.5, 0.5, 2.0, 1.0])
    p = save_nifti(tmp_path / "phase.nii", np.full((5, 7, 3), 40.0, np.float32), aff)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "5 x 7 x 3" in out
    assert "0.5 x 0.5 x 2 mm" in out
    assert "(+0.0000, +0.0000, +1.0000)" in out
    assert "tilted 0.00 deg" in out
    assert "oblique:       no" in out
    assert "guessed units: hz" in out


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.nii.gz", "does not exist"),
        (lambda d: _write(d / "notes.txt", b"hello"), "is not a NIfTI file"),
        (lambda d: _write(d / "bad.nii", b"garbage" * 100), "bad.nii is"),
    ],
)
def test_info_errors_are_one_line_exit_2(tmp_path, capsys, make, message):
    path = make(tmp_path)
    assert main(["info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("qsmnet info: error: ")
    assert message in lines[0]
    assert "Traceback" not in captured.err


def _write(path, content: bytes):
    path.write_bytes(content)
    return path


def test_info_subprocess(oblique_file, tmp_path):
    path, _ = oblique_file
    env = {k: v for k, v in os.environ.items() if k != "QSMNET_DEBUG"}
    cmd = [sys.executable, "-m", "qsmnet.cli.main", "info"]
    kw = {"capture_output": True, "text": True, "env": env, "timeout": 120}
    ok = subprocess.run([*cmd, "--json", str(path)], **kw)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["oblique"] is True
    bad = subprocess.run([*cmd, str(tmp_path / "nope.nii")], **kw)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "does not exist" in bad.stderr
