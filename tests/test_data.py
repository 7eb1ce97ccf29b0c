"""Datasets, augmentation, DataModule and the benchmark loader."""

from __future__ import annotations

import json
from unittest import mock

import numpy as np
import pytest
import torch

from qsmnet.data import (
    GridTransform,
    NiftiFolderDataset,
    QSMDataModule,
    SimulatedQSMDataset,
    collate,
    load_benchmark,
    random_transform,
)
from qsmnet.physics import Geometry, forward_field
from qsmnet.sim import shapes_phantom

TINY = dict(phantom="shapes", shape=(21, 19, 17), patch_size=(15, 15, 13), length=4,
            voxel_size_range=((0.8, 0.8, 1.0), (1.2, 1.2, 2.0)), max_tilt_deg=40.0)


def _equal(a, b):
    return torch.equal(a.field, b.field) and torch.equal(a.chi, b.chi) and a.geometry == b.geometry


def test_simulated_dataset_contrast_augmentation():
    # the same samples (the factor is drawn after everything else), chi, field and noise x s
    plain = list(SimulatedQSMDataset(**TINY, seed=1))
    scaled = list(SimulatedQSMDataset(**TINY, seed=1, scale_range=(0.5, 2.0)))
    factors = []
    for p, q in zip(plain, scaled, strict=True):
        m = p.chi.abs() > 1e-3
        s = float((q.chi[m] / p.chi[m]).mean())
        torch.testing.assert_close(q.chi, p.chi * s, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(q.field, p.field * s, rtol=1e-5, atol=1e-7)
        assert torch.equal(q.mask, p.mask) and q.geometry == p.geometry
        assert q.meta["noise_std"] == pytest.approx(p.meta["noise_std"] * s)
        factors.append(s)
    assert all(0.5 <= f <= 2.0 for f in factors) and max(factors) - min(factors) > 0.05
    with pytest.raises(ValueError, match="scale_range"):
        SimulatedQSMDataset(**TINY, scale_range=(1.5, 1.0))


def test_simulated_dataset_shapes_types_and_determinism():
    a = list(SimulatedQSMDataset(**TINY, seed=1))
    b = list(SimulatedQSMDataset(**TINY, seed=1))
    c = list(SimulatedQSMDataset(**TINY, seed=2))
    assert len(a) == 4
    for s in a:
        assert s.field.shape == (1, 15, 15, 13) and s.field.dtype == torch.float32
        assert s.chi.shape == s.mask.shape == s.field.shape
        assert len(s.geometry) == 1 and s.geometry[0].shape == (15, 15, 13)
        assert s.geometry[0].tilt_deg <= 40.0 + 1e-6
        assert torch.all(s.field[s.mask == 0] == 0)
    assert all(_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(_equal(x, y) for x, y in zip(a, c, strict=True))
    batch = collate(a[:2])
    assert batch.field.shape == (2, 1, 15, 15, 13) and len(batch.geometry) == 2


def test_simulated_dataset_workers_split_and_epochs():
    ds = SimulatedQSMDataset(**TINY, seed=3)
    whole = list(SimulatedQSMDataset(**TINY, seed=3))
    parts = []
    for wid in (0, 1):
        with mock.patch.object(SimulatedQSMDataset, "_worker", staticmethod(lambda w=wid: (w, 2))):
            parts.append(list(SimulatedQSMDataset(**TINY, seed=3)))
    assert [s.meta["index"] for s in parts[0]] == [0, 2] and [s.meta["index"] for s in parts[1]] == [1, 3]
    assert _equal(parts[0][1], whole[2]) and _equal(parts[1][0], whole[1])  # independent of worker count
    e0, e1 = list(ds), list(ds)
    assert not _equal(e0[0], e1[0])  # a new epoch draws new samples
    fixed = SimulatedQSMDataset(**TINY, seed=3, resample_each_epoch=False)
    assert _equal(list(fixed)[0], list(fixed)[0])


def test_patch_field_contains_sources_outside_patch():
    ds = SimulatedQSMDataset(**{**TINY, "augment": False, "noise_range": (0.0, 0.0)}, seed=4)
    s = ds.sample(0)
    g = s.geometry[0]
    local = forward_field(s.chi[0].double(), g.voxel_size, g.b0_dir, dtype=torch.float64) * s.mask[0]
    # simulated on the whole volume: the patch's field differs from its own chi's field
    assert float((s.field[0].double() - local).abs().max()) > 1e-4


@pytest.mark.parametrize("seed", range(4))
def test_augmentation_keeps_dipole_model(seed):
    # (13, 17, 13) pads to the odd FFT grid (27, 35, 27): no Nyquist sample, so flips are exact
    # (on even grids an oblique kernel's Nyquist plane is symmetrised, a ~1e-3 relative effect)
    rng = np.random.default_rng(seed)
    shape, vs = (13, 17, 13), (0.9, 1.1, 1.7)
    ph = shapes_phantom(shape, vs, seed)
    g = Geometry(shape, vs, (0.4, -0.3, 0.85))
    field = forward_field(ph.chi.double(), vs, g.b0_dir, dtype=torch.float64)
    t = random_transform(rng, axes=(0, 1, 2))
    if t.identity:
        t = GridTransform((2, 0, 1), (True, False, True))
    g2 = t.geometry(g)
    expected = forward_field(t.apply(ph.chi).double(), g2.voxel_size, g2.b0_dir, dtype=torch.float64)
    torch.testing.assert_close(t.apply(field), expected, atol=1e-10, rtol=0)
    assert g2.shape == tuple(t.apply(ph.chi).shape)
    # the wrong geometry (B0 not transformed) does not fit: the test can fail
    if g2.b0_dir != g.b0_dir:
        wrong = forward_field(t.apply(ph.chi).double(), g2.voxel_size, g.b0_dir, dtype=torch.float64)
        assert float((wrong - expected).abs().max()) > 1e-3


def test_nifti_folder_dataset_layouts(tmp_path):
    from qsmnet.io import save_nifti
    from qsmnet.sim.benchmark import geometry_affine

    g = Geometry((9, 11, 7), (1.0, 1.0, 2.0), (0.0, 0.5, 0.866))
    aff = geometry_affine(g)
    rng = np.random.default_rng(0)
    field, chi = rng.standard_normal(g.shape), rng.standard_normal(g.shape)
    mask = np.ones(g.shape)
    # flat, per-case folder and BIDS derivatives names
    save_nifti(tmp_path / "caseA_field.nii.gz", field, aff)
    save_nifti(tmp_path / "caseA_mask.nii.gz", mask, aff)
    (tmp_path / "caseB").mkdir()
    save_nifti(tmp_path / "caseB" / "field.nii", field, aff)
    save_nifti(tmp_path / "caseB" / "mask.nii", mask, aff)
    save_nifti(tmp_path / "caseB" / "chi.nii", chi, aff)
    anat = tmp_path / "derivatives" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    save_nifti(anat / "sub-01_desc-local_fieldmap.nii.gz", field, aff)
    save_nifti(anat / "sub-01_mask.nii.gz", mask, aff)
    save_nifti(anat / "sub-01_Chimap.nii.gz", chi, aff)
    save_nifti(anat / "sub-01_T1w.nii.gz", chi, aff)  # ignored
    ds = NiftiFolderDataset(tmp_path)
    assert ds.names == ["caseA", "caseB", "derivatives/sub-01/anat/sub-01"]
    s = ds[2]
    assert s.field.shape == (1, 9, 11, 7) and s.chi is not None and ds[0].chi is None
    np.testing.assert_allclose(s.geometry[0].b0_dir, g.b0_dir, atol=1e-6)
    np.testing.assert_allclose(s.field[0].numpy(), field, atol=1e-6)
    assert len(NiftiFolderDataset(tmp_path, require_chi=True)) == 2


def test_datamodule_from_hydra_config():
    hydra = pytest.importorskip("hydra")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load("qsmnet/conf/data/tiny.yaml")
    dm = hydra.utils.instantiate(cfg)
    assert isinstance(dm, QSMDataModule)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b.field.shape == (2, 1, 17, 17, 17) and len(b.geometry) == 2
    v1 = next(iter(dm.val_dataloader()))
    v2 = next(iter(dm.val_dataloader()))
    assert torch.equal(v1.field, v2.field)  # validation repeats


def test_make_and_load_tiny_benchmark(tmp_path):
    from qsmnet.physics import b0_dir_from_affine
    from qsmnet.sim.benchmark import NOISE_PPM, data_sha256, make_benchmark

    path = make_benchmark(tmp_path / "a", shape=(24, 28, 24), n_brains=1)
    man = json.loads(path.read_text())
    assert len(man["cases"]) == 8
    cases = dict(load_benchmark(tmp_path / "a"))
    s = cases["brain1_oblique30_1x1x2_noise-high"]
    g = s.geometry[0]
    assert g.shape == (24, 28, 12) and g.voxel_size == pytest.approx((1, 1, 2), abs=1e-6)
    assert g.tilt_deg == pytest.approx(30.0, abs=1e-4)
    assert s.meta["labels"].shape == (24, 28, 12) and s.meta["noise_std_ppm"] == NOISE_PPM["high"]
    lo = cases["brain1_oblique30_1x1x2_noise-low"]
    torch.testing.assert_close(lo.chi, s.chi)
    # high minus low is the extra noise only: same pattern scaled (same seed)
    diff = (s.field - lo.field)[s.mask > 0]
    assert float(diff.std()) == pytest.approx(NOISE_PPM["high"] - NOISE_PPM["low"], rel=0.2)
    # regenerated bit-identically
    path2 = make_benchmark(tmp_path / "b", shape=(24, 28, 24), n_brains=1)
    assert json.loads(path2.read_text())["cases"] == man["cases"]
    assert man["cases"][s.meta["name"]]["sha256"]["field"] == data_sha256(s.field[0])
    import nibabel as nib

    aff = nib.load(str(tmp_path / "a" / "brain1_oblique30_1mm_noise-low" / "field.nii.gz")).affine
    assert b0_dir_from_affine(aff)[1] == pytest.approx(0.5, abs=1e-6)
