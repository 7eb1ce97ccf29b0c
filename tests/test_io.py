"""NIfTI I/O: round trips, overwrite refusal, atomic writes, error messages, BIDS names, units."""

from __future__ import annotations

import gzip
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from qsmnet.errors import QSMNetError
from qsmnet.io import (
    bids_name,
    check_output,
    guess_units,
    load_nifti,
    save_nifti,
    sidecar_path,
    write_sidecar,
)
from qsmnet.physics import b0_dir_from_affine


@pytest.mark.parametrize("name", ["x.nii", "x.nii.gz"])
def test_round_trip_keeps_data_and_oblique_affine(tmp_path, smooth_volume, oblique_affine, name):
    p = save_nifti(tmp_path / name, smooth_volume, oblique_affine)
    vol = load_nifti(p)
    assert vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, smooth_volume.astype(np.float32))
    np.testing.assert_allclose(vol.affine, oblique_affine, atol=1e-6)
    # an independent reader agrees on both sform and qform
    img = nib.load(str(p))
    np.testing.assert_allclose(img.get_sform(), oblique_affine, atol=1e-6)
    np.testing.assert_allclose(img.get_qform(), oblique_affine, atol=1e-5)
    g = vol.geometry
    assert g.shape == smooth_volume.shape
    np.testing.assert_allclose(g.voxel_size, (1.0, 1.5, 2.0), atol=1e-6)
    np.testing.assert_allclose(g.b0_dir, b0_dir_from_affine(oblique_affine), atol=1e-6)
    if name.endswith(".gz"):
        with open(p, "rb") as f:
            assert f.read(2) == b"\x1f\x8b"  # really gzip-compressed


def test_scaling_applied_and_header_codes_kept(tmp_path, oblique_affine, rng):
    stored = rng.integers(-100, 100, (9, 7, 5)).astype(np.int16)
    img = nib.Nifti1Image(stored, oblique_affine)
    img.header.set_slope_inter(0.5, 3.0)
    img.set_sform(oblique_affine, code=4)  # mni
    img.set_qform(oblique_affine, code=1)  # scanner
    nib.save(img, tmp_path / "in.nii.gz")
    vol = load_nifti(tmp_path / "in.nii.gz")
    np.testing.assert_allclose(vol.data, stored * 0.5 + 3.0)
    out = save_nifti(tmp_path / "out.nii.gz", vol.data, vol.affine, vol.header)
    back = nib.load(str(out))
    assert back.get_data_dtype() == np.float32
    assert int(back.header["sform_code"]) == 4 and int(back.header["qform_code"]) == 1
    # the reference header's scaling must not be applied to the float data again
    np.testing.assert_allclose(np.asarray(back.dataobj), stored * 0.5 + 3.0)


def test_torch_and_batched_input(tmp_path, smooth_volume):
    t = torch.from_numpy(smooth_volume)[None, None]
    p = save_nifti(tmp_path / "t.nii", t, np.eye(4))
    assert load_nifti(p).data.shape == smooth_volume.shape


def test_overwrite_refused_then_forced(tmp_path, smooth_volume):
    p = tmp_path / "x.nii.gz"
    save_nifti(p, smooth_volume, np.eye(4))
    with pytest.raises(QSMNetError, match="already exists"):
        save_nifti(p, smooth_volume * 0, np.eye(4))
    np.testing.assert_array_equal(load_nifti(p).data, smooth_volume.astype(np.float32))
    save_nifti(p, smooth_volume * 2, np.eye(4), force=True)
    np.testing.assert_allclose(load_nifti(p).data, 2 * smooth_volume.astype(np.float32), rtol=1e-6)


def test_check_output(tmp_path):
    with pytest.raises(QSMNetError, match="does not exist"):
        check_output(tmp_path / "missing" / "x.nii.gz")
    with pytest.raises(QSMNetError, match=r"\.nii"):
        check_output(tmp_path / "x.mgz")
    (tmp_path / "d.nii").mkdir()
    with pytest.raises(QSMNetError, match="directory"):
        check_output(tmp_path / "d.nii", force=True)
    (tmp_path / "e.nii").write_bytes(b"")
    with pytest.raises(QSMNetError, match="already exists"):
        check_output(tmp_path / "e.nii")
    assert check_output(tmp_path / "e.nii", force=True) == tmp_path / "e.nii"
    assert check_output(tmp_path / "new.nii.gz") == tmp_path / "new.nii.gz"


def test_atomic_write_failure_leaves_nothing(tmp_path, smooth_volume, monkeypatch):
    existing = tmp_path / "old.nii.gz"
    save_nifti(existing, smooth_volume, np.eye(4))
    before = existing.read_bytes()

    def broken_save(img, filename):
        with open(filename, "wb") as f:  # a partial write, then the failure
            f.write(b"\x1f\x8bpartial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(tmp_path / "new.nii.gz", smooth_volume, np.eye(4))
    with pytest.raises(OSError, match="disk full"):
        save_nifti(existing, smooth_volume * 3, np.eye(4), force=True)
    assert sorted(os.listdir(tmp_path)) == ["old.nii.gz"]  # no partial file, no temp file
    assert existing.read_bytes() == before


def test_sidecar(tmp_path, smooth_volume):
    p = save_nifti(
        tmp_path / "sub-01_Chimap.nii.gz",
        smooth_volume,
        np.eye(4),
        sidecar={"method": "tkd", "threshold": np.float32(0.19), "b0_dir": (0.0, 0.0, 1.0)},
    )
    sp = sidecar_path(p)
    assert sp == tmp_path / "sub-01_Chimap.json"
    content = json.loads(sp.read_text())
    assert content["method"] == "tkd"
    assert content["threshold"] == pytest.approx(0.19)
    assert content["b0_dir"] == [0.0, 0.0, 1.0]
    assert content["qsmnet_version"]
    assert content["created_utc"].endswith("Z")
    with pytest.raises(QSMNetError, match="already exists"):
        write_sidecar(p, {"a": 1})
    # the image is not written either when only its sidecar would be overwritten
    p.unlink()
    with pytest.raises(QSMNetError, match="sidecar"):
        save_nifti(p, smooth_volume, np.eye(4), sidecar={"a": 1})
    assert not p.exists()
    write_sidecar(p, {"a": 1}, force=True)
    assert json.loads(sp.read_text())["a"] == 1
    assert sidecar_path("dir/x.nii") == sidecar_path("dir/x.nii.gz")


def test_missing_not_nifti_and_corrupt_inputs(tmp_path, smooth_volume):
    with pytest.raises(QSMNetError, match=r"^field file .*nope\.nii\.gz does not exist$"):
        load_nifti(tmp_path / "nope.nii.gz")
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(QSMNetError, match=r"^mask file .*notes\.txt is not a NIfTI file"):
        load_nifti(txt, what="mask")
    fake = tmp_path / "fake.nii"
    fake.write_text("this is not an image" * 30)
    with pytest.raises(QSMNetError, match=r"fake\.nii is (not a NIfTI file|corrupt)"):
        load_nifti(fake)
    with pytest.raises(QSMNetError, match="directory"):
        load_nifti(tmp_path)
    # truncated: a valid header but half of the voxel data missing, plain and gzipped
    good = save_nifti(tmp_path / "good.nii", smooth_volume, np.eye(4))
    raw = good.read_bytes()
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(QSMNetError, match=r"^field file .*short\.nii is corrupt or truncated: "):
        load_nifti(tmp_path / "short.nii")
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw)[: len(raw) // 4])
    with pytest.raises(QSMNetError, match=r"short\.nii\.gz is corrupt or truncated"):
        load_nifti(tmp_path / "short.nii.gz")
    for msg_case in ("short.nii", "short.nii.gz"):
        try:
            load_nifti(tmp_path / msg_case)
        except QSMNetError as e:
            assert "\n" not in str(e)


def test_two_dimensional_and_complex_rejected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)), tmp_path / "flat.nii")
    with pytest.raises(QSMNetError, match="3D"):
        load_nifti(tmp_path / "flat.nii")
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.complex64), np.eye(4)), tmp_path / "c.nii")
    with pytest.raises(QSMNetError, match="complex"):
        load_nifti(tmp_path / "c.nii")


@pytest.mark.parametrize(
    ("source", "kwargs", "expected"),
    [
        ("sub-01_ses-1_part-phase_Localfield.nii.gz", {}, "sub-01_ses-1_Chimap.nii.gz"),
        ("/data/sub-01/anat/sub-01_acq-gre_run-2_echo-1_part-phase_MEGRE.nii", {},
         "sub-01_acq-gre_run-2_echo-1_Chimap.nii.gz"),
        ("sub-02_ses-pre_desc-bfr_Localfield.nii.gz", {"desc": "tkd"},
         "sub-02_ses-pre_desc-tkd_Chimap.nii.gz"),
        ("sub-02_ses-pre_Localfield.nii.gz", {"desc": "unet", "suffix": "Chimap"},
         "sub-02_ses-pre_desc-unet_Chimap.nii.gz"),
        ("sub-03_part-phase_Localfield.nii.gz", {"suffix": "Localfield"}, "sub-03_Localfield.nii.gz"),
        ("field.nii", {}, "field_Chimap.nii.gz"),
        ("my_local_field.nii.gz", {}, "my_local_field_Chimap.nii.gz"),
        ("scan.nii.gz", {"desc": "tkd"}, "scan_desc-tkd_Chimap.nii.gz"),
    ],
)
def test_bids_name(source, kwargs, expected):
    assert bids_name(source, **kwargs) == expected


def test_bids_name_rejects_bad_labels():
    with pytest.raises(ValueError):
        bids_name("sub-01_T1w.nii", desc="a_b")
    with pytest.raises(ValueError):
        bids_name("sub-01_T1w.nii", suffix="Chi-map")


def test_guess_units(rng):
    from scipy.ndimage import gaussian_filter

    from qsmnet.physics import ppm_to_hz, ppm_to_rad

    f = gaussian_filter(rng.standard_normal((21, 23, 19)), 1.0)
    ppm = 0.04 * f / f.std()  # a typical local field
    mask = np.zeros(ppm.shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    assert guess_units(ppm, mask) == "ppm"
    assert guess_units(torch.from_numpy(ppm), torch.from_numpy(mask)) == "ppm"
    assert guess_units(ppm_to_hz(ppm, 3.0), mask) == "hz"
    assert guess_units(ppm_to_rad(ppm * 5, te=0.02, b0=3.0), mask) == "rad"  # unwrapped, a few rad
    wrapped = np.angle(np.exp(1j * ppm_to_rad(ppm * 20, te=0.02, b0=3.0)))
    assert guess_units(wrapped, mask) == "rad"
    assert guess_units(np.where(mask, ppm, 500.0), mask) == "ppm"  # outside the mask is ignored
    assert guess_units(np.zeros((3, 3, 3))) == "ppm"


def test_nifti2_and_4d_input_zooms_follow_new_affine(tmp_path):
    data = np.arange(4 * 5 * 6 * 2, dtype=np.float64).reshape(4, 5, 6, 2)
    nib.save(nib.Nifti2Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "n2.nii")
    vol = load_nifti(tmp_path / "n2.nii")
    assert vol.data.shape == (4, 5, 6, 2) and vol.geometry.shape == (4, 5, 6)
    new_affine = np.diag([0.5, 0.7, 0.9, 1.0])
    p = save_nifti(tmp_path / "echo1.nii.gz", vol.data[..., 0], new_affine, vol.header)
    back = nib.load(str(p))
    assert isinstance(back, nib.Nifti2Image)
    np.testing.assert_allclose(back.header.get_zooms(), (0.5, 0.7, 0.9))
    np.testing.assert_array_equal(back.get_fdata(), data[..., 0])
