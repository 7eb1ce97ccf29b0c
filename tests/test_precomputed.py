"""Networks that refine an iterative solver's estimate: the cached dataset, the models, inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsmnet.data import PrecomputedDataset, QSMDataModule, collate
from qsmnet.data.precomputed import source_crop
from qsmnet.data.simulated import random_crop
from qsmnet.inference.network import NetworkMethod
from qsmnet.models import QSMUNet, VarNet
from qsmnet.physics import DipoleOperator, Geometry
from qsmnet.solvers import SOLVERS

SIM = {"phantom": "shapes", "shape": [20, 18, 16], "voxel_size_range": [[1, 1, 1], [1, 1, 2]],
       "max_tilt_deg": 30.0, "noise_range": [0.0, 0.002]}
TV = {"lam": 5e-5, "iterations": 15}


def _dataset(tmp_path, **kw):
    args = {"simulation": SIM, "init": "tv", "init_params": TV, "volumes": 3, "seed": 3, "workers": 1}
    return PrecomputedDataset(tmp_path / "cache", **{**args, **kw})


def test_cache_holds_the_whole_volume_solution(tmp_path):
    ds = _dataset(tmp_path, augment=False)
    with pytest.raises(FileNotFoundError, match="prepare"):
        ds[0]
    ds.prepare(progress=False)
    assert not ds.missing()
    for i in range(3):
        s = ds[i]
        assert s.field.shape == s.init.shape == s.chi.shape == (1, 20, 18, 16)
        ref = SOLVERS["tv"](s.field[None], s.mask[None], s.geometry, **TV)[0]
        torch.testing.assert_close(s.init, ref, rtol=1e-4, atol=1e-6)
        # the field is the forward model of chi (noise aside), so the estimate is a real solution
        assert float((s.init - s.chi)[s.mask > 0].abs().mean()) < float(s.chi[s.mask > 0].abs().mean())
    # a different solver setting gets its own folder; the same spec reuses the cache
    assert _dataset(tmp_path, init_params={"lam": 1e-4, "iterations": 15}).folder != ds.folder
    assert _dataset(tmp_path, patch_size=8).missing() == []


def test_parallel_prepare_matches_serial(tmp_path):
    a = _dataset(tmp_path / "a", augment=False)
    b = _dataset(tmp_path / "b", augment=False, workers=2)
    a.prepare(progress=False)
    b.prepare(progress=False)
    for i in range(3):
        torch.testing.assert_close(a[i].init, b[i].init)
        torch.testing.assert_close(a[i].chi, b[i].chi)


def test_patches_are_cut_from_the_whole_volume_and_augmented_together(tmp_path):
    whole = _dataset(tmp_path, augment=False)
    whole.prepare(progress=False)
    patches = _dataset(tmp_path, patch_size=(12, 10, 8), patches_per_volume=4, augment=True)
    assert len(patches) == 12
    torch.manual_seed(0)
    for k in range(len(patches)):
        p = patches[k]
        w = whole[k // 4]
        assert p.field.shape == (1, 12, 10, 8) or p.field.shape == (1, 10, 12, 8)
        assert p.geometry[0].shape == tuple(p.field.shape[-3:])
        # each of chi, field and init went through the same crop and grid transform: the pair
        # (field, init) is found at one place of the whole volume under one of the 16 transforms
        found = False
        for perm in ((0, 1, 2), (1, 0, 2)):
            for flips in range(8):
                dims = [d + 1 for d in range(3) if flips >> d & 1]
                f, i = p.field, p.init
                f, i = (torch.flip(f, dims), torch.flip(i, dims)) if dims else (f, i)
                f, i = f.permute(0, *(1 + a for a in perm)), i.permute(0, *(1 + a for a in perm))
                sx, sy, sz = f.shape[-3:]
                for x in range(20 - sx + 1):
                    for y in range(18 - sy + 1):
                        for z in range(16 - sz + 1):
                            if torch.equal(w.field[0, x:x + sx, y:y + sy, z:z + sz], f[0]):
                                found = found or torch.equal(w.init[0, x:x + sx, y:y + sy, z:z + sz], i[0])
        assert found
    batch = collate([patches[0], patches[1]])
    assert batch.init.shape == batch.field.shape


def test_source_patches_are_centred_on_strong_chi():
    # a sparse strong source in a weak background: uniform patches rarely hold it, source patches
    # always do, and the drawn centre is a voxel of the source (weighted by |chi|)
    chi = torch.full((48, 40, 36), 0.02)
    chi[30:33, 12:14, 20:22] = 1.0
    chi[10, 30, 10] = 0.1  # below the threshold: never a centre
    mask = torch.ones_like(chi)
    rng = np.random.default_rng(0)
    for _ in range(50):
        sl = source_crop(chi, mask, (12, 10, 8), rng, 0.2)
        centre = [s.start + n // 2 for s, n in zip(sl, (12, 10, 8), strict=True)]
        assert chi[tuple(centre)] == 1.0 and chi[sl].shape == (12, 10, 8)
    assert source_crop(chi, torch.zeros_like(chi), (12, 10, 8), rng, 0.2) is None  # outside the mask
    assert source_crop(torch.full_like(chi, 0.1), mask, (12, 10, 8), rng, 0.2) is None
    uniform = sum(float(chi[random_crop(mask, (12, 10, 8), rng, 0.2)].max()) == 1.0 for _ in range(200))
    assert uniform < 50


def test_source_patches_are_cut_alike_from_every_array(tmp_path):
    whole = _dataset(tmp_path, augment=False)
    whole.prepare(progress=False)
    src = _dataset(tmp_path, patch_size=(10, 10, 8), patches_per_volume=3, augment=False,
                   source_patches=1.0, source_threshold=0.05)
    torch.manual_seed(1)
    for k in range(len(src)):
        p, w = src[k], whole[k // 3]
        hit = [(x, y, z) for x in range(11) for y in range(9) for z in range(9)
               if torch.equal(w.chi[0, x:x + 10, y:y + 10, z:z + 8], p.chi[0])]
        assert hit and any(torch.equal(w.init[0, x:x + 10, y:y + 10, z:z + 8], p.init[0])
                           and torch.equal(w.field[0, x:x + 10, y:y + 10, z:z + 8], p.field[0])
                           for x, y, z in hit)
        assert float(p.chi.abs().max()) >= 0.05
    with pytest.raises(ValueError, match="source_patches"):
        _dataset(tmp_path, source_patches=1.5)


def test_scale_augmentation_scales_chi_field_and_estimate_alike(tmp_path):
    whole = _dataset(tmp_path, augment=False)
    whole.prepare(progress=False)
    scaled = _dataset(tmp_path, augment=False, scale_range=(0.5, 2.0))
    assert scaled.folder == whole.folder  # the cache does not depend on the augmentation
    torch.manual_seed(2)
    factors = []
    for k in range(3):
        for _ in range(4):
            p, w = scaled[k], whole[k]
            m = w.chi.abs() > 1e-3
            s = float((p.chi[m] / w.chi[m]).mean())
            for a, b in ((p.chi, w.chi), (p.field, w.field), (p.init, w.init)):
                torch.testing.assert_close(a, b * s, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(p.mask, w.mask)
            assert p.meta["noise_std"] == pytest.approx(w.meta["noise_std"] * s)
            factors.append(s)
    assert 0.5 <= min(factors) < 0.9 and 1.1 < max(factors) <= 2.0
    with pytest.raises(ValueError, match="scale_range"):
        _dataset(tmp_path, scale_range=(0.0, 2.0))
    with pytest.raises(ValueError, match="scale_range"):
        _dataset(tmp_path, scale_range=(2.0, 1.0))


def test_datamodule_prepares_the_cache(tmp_path):
    spec = {"cache_dir": str(tmp_path / "cache"), "simulation": SIM, "init": "tkd", "volumes": 2,
            "patch_size": 8, "patches_per_volume": 2, "workers": 1}
    dm = QSMDataModule(train=spec, batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b.init is not None and b.field.shape[-3:] == (8, 8, 8)
    v = next(iter(dm.val_dataloader()))  # 4 whole validation volumes of another seed
    assert v.field.shape[-3:] == (20, 18, 16) and len(dm.val_set) == 4


def test_extra_training_set_is_concatenated_with_its_own_cache(tmp_path):
    spec = {"cache_dir": str(tmp_path / "cache"), "simulation": SIM, "init": "tkd", "volumes": 2,
            "patch_size": 8, "patches_per_volume": 2, "workers": 1, "seed": 0}
    extra = {"big": {"seed": 10, "volumes": 1, "simulation_override": {"shape": [16, 16, 16]}},
             "off": {"seed": 20, "volumes": 0}}
    dm = QSMDataModule(train=spec, train_extra=extra, batch_size=2)
    assert list(dm.extra_specs) == ["big"]  # volumes 0: left out
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) == (2 + 1) * 2
    main, big = dm.train_set.datasets
    assert main.folder != big.folder and main.spec == PrecomputedDataset(**{
        k: v for k, v in spec.items() if k != "cache_dir"}, cache_dir=spec["cache_dir"]).spec
    assert big.spec["simulation"][0]["shape"] == [16, 16, 16] and big.spec["seed"] == 10
    assert big[0].field.shape[-3:] == (8, 8, 8)
    whole = torch.load(big.path(0))
    assert tuple(whole["field"].shape[-3:]) == (16, 16, 16)
    clash = QSMDataModule(train=spec, train_extra={"x": {"seed": 0, "volumes": 1}}, batch_size=2)
    with pytest.raises(ValueError, match="train_extra.x seeds"):
        clash.setup("fit")


def test_validation_on_another_profile_has_its_own_cache(tmp_path):
    spec = {"cache_dir": str(tmp_path / "cache"), "simulation": SIM, "init": "tkd", "volumes": 1,
            "patch_size": 8, "patches_per_volume": 2, "workers": 1, "seed": 0}
    val = {**{k: v for k, v in spec.items() if k not in ("patch_size", "patches_per_volume")},
           "seed": 5}
    plain = QSMDataModule(train=spec, val=val, batch_size=2)
    other = QSMDataModule(train=spec, val={**val, "simulation_override": {"shape": [16, 16, 16]}},
                          batch_size=2)
    assert "simulation_override" not in other._val_spec()
    other.prepare_data()
    other.setup("fit")
    plain.setup("fit")
    assert other.val_set.folder != plain.val_set.folder
    assert tuple(other.val_set[0].field.shape[-3:]) == (16, 16, 16)  # the whole overridden volume
    assert plain.val_set.spec["simulation"][0]["shape"] != [16, 16, 16]


def _phantom(shape=(24, 22, 20), geom=None):
    g = torch.Generator().manual_seed(1)
    chi = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape, generator=g), 5, 1, 2) * 0.5
    mask = torch.zeros(1, 1, *shape)
    mask[..., 3:-3, 3:-3, 3:-3] = 1
    geom = geom or Geometry(shape, (1.0, 1.0, 2.0), (0.0, 0.5, 0.866))
    return chi * mask, DipoleOperator(geom).A(chi * mask) * mask, mask, geom


@pytest.mark.parametrize("cls", [QSMUNet, VarNet])
def test_networks_start_from_a_solver(cls):
    chi, field, mask, geom = _phantom()
    kw = ({"channels": (4, 8), "strides": (2,)} if cls is QSMUNet
          else {"iterations": 1, "features": 4, "depth": 2})
    net = cls(init="tv", init_params=TV, **kw).eval()
    assert net.precomputed_init and not cls(**kw).precomputed_init
    est = net.initial_estimate(field, mask, geom)
    torch.testing.assert_close(est, SOLVERS["tv"](field, mask, geom, **TV) * mask)
    with torch.no_grad():
        torch.testing.assert_close(net(field, mask, geom), net(field, mask, geom, init=est))
        # the given estimate is the one used
        assert not torch.allclose(net(field, mask, geom, init=est), net(field, mask, geom, init=2 * est))
    with pytest.raises(ValueError, match="init must be"):
        cls(init="nosuchsolver", **kw)


def test_inference_solves_the_estimate_once_on_the_whole_volume(monkeypatch):
    chi, field, mask, geom = _phantom((40, 36, 20), Geometry((40, 36, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)))
    net = QSMUNet(channels=(4, 8), strides=(2,), init="tv", init_params=TV)
    calls = []
    orig = QSMUNet.initial_estimate

    def counting(self, f, m, g, op=None):
        calls.append(tuple(f.shape[-3:]))
        return orig(self, f, m, g, op)

    monkeypatch.setattr(QSMUNet, "initial_estimate", counting)
    method = NetworkMethod(net, name="t")
    whole = method(field, mask, geom, window="off")
    windowed = method(field, mask, geom, window=24, overlap=0.5)
    assert calls == [(40, 36, 20), (40, 36, 20)]
    method(field, mask, geom, window="off", refine=1)  # refinement reuses the same estimate
    assert len(calls) == 3
    # a U-Net is local given its (whole-volume) estimate: windows agree with the whole volume
    err = (windowed - whole)[mask > 0].norm() / whole[mask > 0].norm()
    assert err < 0.05


def test_residual_guide_is_what_the_data_say_about_the_estimate():
    from qsmnet.models.common import make_operator, residual_guide, tikhonov

    chi, field, mask, geom = _phantom()
    # the truth explains its own noise-free field: nothing left to say
    assert residual_guide(field, mask, geom, chi, 0.02).abs().max() < 1e-5
    # from a zero estimate the guide is the Tikhonov solution of the field, for this geometry
    op = make_operator(geom, field)
    torch.testing.assert_close(residual_guide(field, mask, geom, torch.zeros_like(chi), 0.02),
                               tikhonov(op, field * mask, 0.02) * mask)
    other = Geometry(geom.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    assert not torch.allclose(residual_guide(field, mask, other, 0 * chi, 0.02),
                              residual_guide(field, mask, geom, 0 * chi, 0.02))


def test_guided_unet_takes_the_guide_and_grows_from_an_unguided_one(tmp_path):
    from qsmnet.models.io import load_grown

    chi, field, mask, geom = _phantom()
    kw = {"channels": (4, 8), "strides": (2,), "init": "tv", "init_params": TV}
    old = QSMUNet(**kw).eval()
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net = QSMUNet(guide_lambda=0.02, **kw).eval()
    assert net.init_channels == 2 and net.precomputed_init
    grown = load_grown(net, old.state_dict())
    assert grown  # the first convolutions took a new input channel, initialised to zero
    init = net.initial_estimate(field, mask, geom)
    assert init.shape[1] == 2
    torch.testing.assert_close(init[:, :1], old.initial_estimate(field, mask, geom))
    with torch.no_grad():
        # zero weights on the new channel: exactly the old network's output
        before = old(field, mask, geom, init=init[:, :1])
        torch.testing.assert_close(net(field, mask, geom, init=init), before, rtol=0, atol=0)
        for k in grown:
            dict(net.named_parameters())[k][:, -1].fill_(0.1)
        assert not torch.allclose(net(field, mask, geom, init=init), old(field, mask, geom, init=init[:, :1]))
        # windows get every channel of the whole-volume estimate
        method = NetworkMethod(net, name="t")
        whole = method(field, mask, geom, window="off")
        windowed = method(field, mask, geom, window=16, overlap=0.5)
        assert (windowed - whole)[mask > 0].norm() / whole[mask > 0].norm() < 0.05
    with pytest.raises(ValueError, match="channels"):
        net(field, mask, geom, init=init[:, :1])
    with pytest.raises(ValueError, match="guide_lambda"):
        QSMUNet(guide_lambda=0.0, **kw)


def test_dataset_guide_is_computed_on_the_whole_volume(tmp_path):
    from qsmnet.models.common import residual_guide

    whole = _dataset(tmp_path, augment=False, guide_lambda=0.02)
    whole.prepare(progress=False)
    s = whole[1]
    assert s.init.shape == (2, 20, 18, 16)
    ref = residual_guide(s.field[None], s.mask[None], s.geometry, s.init[None, :1], 0.02)[0]
    torch.testing.assert_close(s.init[1:], ref)
    patches = _dataset(tmp_path, augment=False, guide_lambda=0.02, patch_size=(12, 10, 8))
    torch.manual_seed(0)
    p = patches[1]
    sx, sy, sz = p.field.shape[-3:]
    hits = [(x, y, z) for x in range(20 - sx + 1) for y in range(18 - sy + 1) for z in range(16 - sz + 1)
            if torch.equal(s.field[0, x:x + sx, y:y + sy, z:z + sz], p.field[0])]
    assert hits
    x, y, z = hits[0]
    # the patch's guide is the whole volume's, cropped (not recomputed on the patch)
    torch.testing.assert_close(p.init[1], ref[0, x:x + sx, y:y + sy, z:z + sz])


def test_the_in_model_closed_form_is_not_cached_and_a_tikhonov_solver_is(tmp_path):
    # "tikhonov" with no parameters is computed inside the network on the patch it gets, as at
    # inference: caching the tikhonov *solver's* answer for it (its own lambda, whole volume) fed
    # the network another input in training than at inference (unet_head, sessions 5-14)
    spec = {"simulation": {"phantom": "shapes", "shape": (16, 16, 16)}, "volumes": 1}
    plain = PrecomputedDataset(tmp_path, init="tikhonov", init_params={}, **spec)
    plain.prepare()
    assert plain[0].init is None
    solver = PrecomputedDataset(tmp_path, init="tikhonov", init_params={"lam": "auto"}, **spec)
    solver.prepare()
    s = solver[0]
    torch.testing.assert_close(s.init, SOLVERS["tikhonov"](s.field[None], s.mask[None], s.geometry)[0])
    with pytest.raises(ValueError, match="residual guide needs a precomputed estimate"):
        PrecomputedDataset(tmp_path, init="tikhonov", guide_lambda=0.02, **spec)
    kw = {"channels": (4, 8), "strides": (2,)}
    assert not QSMUNet(init="tikhonov", **kw).precomputed_init
    net = QSMUNet(init="tikhonov", init_params={"lam": "auto"}, **kw)
    assert net.precomputed_init
    chi, field, mask, geom = _phantom()
    expected = SOLVERS["tikhonov"](field, mask, geom) * mask
    torch.testing.assert_close(net.initial_estimate(field, mask, geom), expected)


def test_shipped_networks_see_at_inference_the_estimate_they_were_trained_on():
    import json
    from pathlib import Path

    from qsmnet.inference.contract import signature_defaults
    from qsmnet.models.io import build_network

    def call(name, params):  # a solver call with its defaults filled in
        return name, {**signature_defaults(SOLVERS[name]), **(params or {})}

    checked = 0
    for path in sorted((Path(__file__).parents[1] / "qsmnet" / "weights").glob("*.json")):
        meta = json.loads(path.read_text())
        train = ((meta.get("train_config") or {}).get("data") or {}).get("train") or {}
        if not train.get("cache_dir") or train.get("init") is None or train.get("base"):
            continue
        net = build_network(meta["model"])
        assert net.precomputed_init, path.name
        assert call(net.init, net.init_params) == call(train["init"], train["init_params"]), path.name
        checked += 1
    assert checked >= 3  # unet_head, unet_tv, varnet_tv


def test_a_new_estimate_of_a_simulated_set_reuses_its_volumes(tmp_path, monkeypatch):
    first = _dataset(tmp_path, augment=False)
    first.prepare(progress=False)
    import qsmnet.data.precomputed as pre

    class NoSimulation:
        def sample(self, *args):
            raise AssertionError("simulated again")

    monkeypatch.setattr(pre, "_simulation", lambda *a, **k: NoSimulation())
    lam = {"lam": 0.05, "regulariser": "identity"}
    second = _dataset(tmp_path, augment=False, init="tikhonov", init_params=lam)
    assert second.folder != first.folder
    second.prepare(progress=False)
    for i in range(3):
        a, b = first[i], second[i]
        torch.testing.assert_close(b.chi, a.chi, rtol=0, atol=0)
        torch.testing.assert_close(b.field, a.field, rtol=0, atol=0)
        ref = SOLVERS["tikhonov"](a.field[None], a.mask[None], a.geometry, **lam)[0]
        torch.testing.assert_close(b.init, ref)
    # another seed is another simulation: nothing to take, so it simulates
    with pytest.raises(AssertionError, match="simulated again"):
        _dataset(tmp_path, augment=False, init="tikhonov", init_params=lam, seed=4).prepare(progress=False)
