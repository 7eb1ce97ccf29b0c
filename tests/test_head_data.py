"""Training volumes from whole simulated heads (qsmnet.data.head) and their cache."""

from __future__ import annotations

import pytest
import torch

from qsmnet.data import PrecomputedDataset
from qsmnet.data.head import HeadSimulation
from qsmnet.sim.acquire import head_fields
from qsmnet.sim.benchmark_v2 import BENCHMARK_V2_SEED, unexplained_fraction

# A whole head on a coarse grid (4 mm voxels hold the head in 47 x 57 x 47).
COARSE = {"shape": [47, 57, 47], "voxel_size_range": [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]], "brain_reuse": 2}


@pytest.fixture(scope="module")
def sim():
    return HeadSimulation(**COARSE, seed=5)


def test_volume_is_deterministic_and_seeded(sim):
    a, b = sim.sample(1), HeadSimulation(**COARSE, seed=5).sample(1)
    assert torch.equal(a.field, b.field) and torch.equal(a.chi, b.chi)
    assert a.geometry == b.geometry
    other = HeadSimulation(**COARSE, seed=6).sample(1)
    assert not torch.equal(other.chi, a.chi)
    # brain_reuse: volumes 0 and 1 share a head (same chi grid before cropping), not B0
    c = sim.sample(0)
    assert c.geometry[0].b0_dir != a.geometry[0].b0_dir
    assert sim.head(0)[0] is sim.head(0)[0]
    with pytest.raises(ValueError, match="benchmark v2"):
        HeadSimulation(**COARSE, seed=BENCHMARK_V2_SEED)
    with pytest.raises(ValueError, match="epoch"):
        sim.sample(0, epoch=1)


def test_head_params_reach_the_phantom(sim):
    # REAL_FIELD_PROFILE's kind of settings: same head and B0, stronger grey/white contrast
    strong = HeadSimulation(**COARSE, seed=5, head_params={"tissue_scale": 2.0})
    a, b = sim.sample(0), strong.sample(0)
    assert a.geometry == b.geometry and torch.equal(a.mask, b.mask)
    lab = sim.head(0)[0].labels
    assert strong.head(0)[0].info["tissue_scale"] == 2.0
    assert float(b.chi.abs().sum()) > 1.3 * float(a.chi.abs().sum())
    torch.testing.assert_close(strong.head(0)[0].chi[lab == 0], sim.head(0)[0].chi[lab == 0])


def test_background_is_removed_and_target_is_the_brain_chi(sim):
    s = sim.sample(0)
    g = s.geometry[0]
    chi, field, mask = s.chi[0], s.field[0], s.mask[0]
    assert g.shape == tuple(field.shape) and g.tilt_deg <= 45.0 + 1e-6
    assert float((field * (1 - mask)).abs().max()) == 0.0
    assert float(chi[mask > 0].abs().mean()) > 0.01  # brain chi, CSF = 0
    # V-SHARP removed most of the background: the field is far closer to the brain's own field
    # (head_fields' local field, the same head and B0, no background) than the total field is
    ph, vs = sim.head(0)
    total, local = head_fields(ph, vs, g.b0_dir)
    box = tuple(slice(o, o + n) for o, n in zip(s.meta["origin"], g.shape, strict=True))
    ref = _demean(local[box], mask)
    err_bfr = (_demean(field, mask) - ref).norm()
    err_total = (_demean(total[box], mask) - ref).norm()
    assert float(err_bfr) < 0.4 * float(err_total)


def _demean(x, m):
    x = x.double()
    return (x - x[m > 0].mean()) * m


def test_thin_slices_average_slice_pairs():
    thin = HeadSimulation(**COARSE, factors=[1, 1, 2], seed=5).sample(0)
    iso = HeadSimulation(**COARSE, seed=5).sample(0)
    assert thin.geometry[0].voxel_size == pytest.approx((4.0, 4.0, 8.0))
    assert thin.field.shape[-1] < iso.field.shape[-1]
    assert thin.field.shape[-3] == pytest.approx(iso.field.shape[-3], abs=2)
    pdf = HeadSimulation(**COARSE, bfr="pdf", seed=5).sample(0)
    assert unexplained_fraction(pdf.field[0], pdf.chi[0], pdf.mask[0], pdf.geometry[0]) < 1.0


def test_precomputed_cache_of_heads(tmp_path):
    heads = [{**COARSE, "phantom": "head"}, {**COARSE, "phantom": "head", "factors": [1, 1, 2]}]
    spec = {"simulation": heads, "volumes": 2, "seed": 11, "workers": 1}
    ds = PrecomputedDataset(tmp_path, init="tkd", **spec, augment=False)
    ds.prepare(progress=False)
    for i in range(2):
        ref = HeadSimulation(**spec["simulation"][i], seed=11 + i).sample(0)
        assert torch.equal(ds[i].field, ref.field) and torch.equal(ds[i].chi, ref.chi)
        assert ds[i].init.shape == ref.field.shape
    assert ds[1].geometry[0].voxel_size[2] == pytest.approx(8.0)
    # no estimate: the volumes alone (another cache folder), items without init
    bare = PrecomputedDataset(tmp_path, init=None, **spec, augment=False, patch_size=[8, 8, 6])
    assert bare.folder != ds.folder
    bare.prepare(progress=False)
    item = bare[0]
    assert item.init is None and item.field.shape == (1, 8, 8, 6)


def test_validation_seeds_are_held_out(tmp_path):
    from qsmnet.data import QSMDataModule

    heads = [{**COARSE, "phantom": "head"}, {**COARSE, "phantom": "head", "factors": [1, 1, 2]}]
    train = {"cache_dir": str(tmp_path), "simulation": heads, "init": "tkd", "volumes": 2, "seed": 11}
    # entries use seeds 11 and 12: a validation seed of 12 would repeat training volumes
    with pytest.raises(ValueError, match="overlap"):
        QSMDataModule(train=train, val={**train, "seed": 12}).setup()
    dm = QSMDataModule(train=train)
    assert dm._val_spec()["seed"] == 13  # derived validation: past both entries
    dm.setup()
    assert len(dm.val_set) == 4
