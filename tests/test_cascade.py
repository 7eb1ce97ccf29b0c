"""A cascade (QSMCascade): frozen base, head started from it, whole-volume flip-averaged base answer
in training data and inference alike, weights that rebuild without the base's file."""

from __future__ import annotations

import json

import pytest
import torch

from qsmnet.data import PrecomputedDataset
from qsmnet.data.augment import FLIPS
from qsmnet.inference.network import whole_volume_init
from qsmnet.models import QSMCascade, QSMUNet
from qsmnet.models import io as mio
from qsmnet.models.common import residual_guide
from qsmnet.physics import DipoleOperator, Geometry

SIM = {"phantom": "shapes", "shape": [20, 18, 16], "voxel_size_range": [[1, 1, 1], [1, 1, 2]],
       "max_tilt_deg": 30.0, "noise_range": [0.0, 0.002]}
TV = {"lam": 5e-5, "iterations": 15}
SMALL = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
BASE_CFG = {"_target_": "qsmnet.models.QSMUNet", **SMALL, "init": "tv", "init_params": TV,
            "guide_lambda": 0.05}


def _base(tmp_path, seed=0):
    """A small guided TV U-Net with non-trivial weights, saved as ``tmp_path/base``."""
    torch.manual_seed(seed)
    net = mio.build_network(BASE_CFG)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    mio.save_weights(net, BASE_CFG, tmp_path / "base")
    return net, str(tmp_path / "base")


def _sample(shape=(20, 18, 16), geom=None):
    g = torch.Generator().manual_seed(1)
    chi = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape, generator=g), 3, 1, 1) * 0.3
    mask = torch.zeros(1, 1, *shape)
    mask[..., 2:-2, 2:-2, 2:-2] = 1
    geom = geom or Geometry(shape, (1.0, 1.0, 1.5), (0.3, 0.1, 1.0))
    return DipoleOperator(geom).A(chi * mask) * mask, mask, geom


def test_head_starts_as_the_base_and_only_the_head_trains(tmp_path):
    base, path = _base(tmp_path)
    net = QSMCascade(path, guide_lambda=0.02, **SMALL)
    assert net.init_channels == 2 and net.base_flips == 4
    for k, v in base.state_dict().items():
        torch.testing.assert_close(net.head.state_dict()[k], v)
    assert not any(p.requires_grad for p in net.base.parameters())
    net.train()
    assert net.head.training and not net.base.training
    f, m, g = _sample()
    net(f, m, (g,)).sum().backward()
    assert all(p.grad is None for p in net.base.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.head.parameters())
    # a head of another shape starts fresh
    other = QSMCascade(path, channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    assert other.head.unet.state_dict().keys() != net.head.unet.state_dict().keys()


def test_forward_refines_the_base_answer_with_its_residual_guide(tmp_path):
    _, path = _base(tmp_path)
    net = QSMCascade(path, guide_lambda=0.02, **SMALL).eval()
    f, m, g = _sample()
    with torch.no_grad():
        est = net.base(f, m, (g,))
        init = net.initial_estimate(f, m, (g,))
        torch.testing.assert_close(init[:, :1], est * m)
        torch.testing.assert_close(init[:, 1:], residual_guide(f, m, (g,), est, 0.02))
        torch.testing.assert_close(net(f, m, (g,)), net.head(f, m, (g,), init=init))


def test_inference_starts_from_the_flip_averaged_base(tmp_path):
    _, path = _base(tmp_path)
    net = QSMCascade(path, guide_lambda=0.02, base_flips=4, **SMALL).eval()
    f, m, g = _sample()
    with torch.no_grad():
        start = net.base.initial_estimate(f, m, g)  # the base's TV: solved once, flipped with the input
        answers = [t.apply(net.base(t.apply(f), t.apply(m), t.geometry(g), init=t.apply(start)))
                   for t in FLIPS[:4]]
        ref = net.guide(f, m, g, sum(answers) / 4)
        got = whole_volume_init(net, f, m, g)
        one = whole_volume_init(QSMCascade(path, guide_lambda=0.02, base_flips=1, **SMALL), f, m, g)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    assert (one - got).abs().max() > 1e-4  # the flips matter, so the comparison above can fail


def test_exported_cascade_rebuilds_without_the_base_file(tmp_path):
    _, path = _base(tmp_path)
    net = QSMCascade(path, guide_lambda=0.02, **SMALL).eval()
    with torch.no_grad():
        for p in net.head.parameters():
            p.add_(0.01)
    cfg = {"_target_": "qsmnet.models.QSMCascade", "base": path, "guide_lambda": 0.02, **SMALL}
    mio.save_weights(net, cfg, tmp_path / "cascade")
    assert json.loads((tmp_path / "cascade.json").read_text())["model"]["base"] == BASE_CFG
    (tmp_path / "base.safetensors").unlink()
    (tmp_path / "base.json").unlink()
    again, _ = mio.load_network(tmp_path / "cascade")
    f, m, g = _sample()
    with torch.no_grad():
        torch.testing.assert_close(again(f, m, (g,)), net(f, m, (g,)))


def test_loader_refuses_foreign_classes_inside_a_cascade_config():
    cfg = {"_target_": "qsmnet.models.QSMCascade", "base": {"_target_": "os.system", "command": "true"}}
    with pytest.raises(ValueError, match="_target_"):
        mio.build_network(cfg)


def test_dataset_caches_the_base_answer_per_whole_volume(tmp_path):
    from qsmnet.data.precomputed import base_answer

    base, path = _base(tmp_path)
    args = {"simulation": SIM, "init": None, "init_params": None, "volumes": 2, "seed": 3, "workers": 1,
            "augment": False, "base": path, "guide_lambda": 0.02}
    ds = PrecomputedDataset(tmp_path / "cache", **args)
    assert ds.spec["init"] == "tv" and ds.spec["init_params"] == TV  # read from the base's config
    ds.prepare(progress=False)
    solver = PrecomputedDataset(tmp_path / "cache", **{**args, "base": None, "init": "tv", "init_params": TV,
                                                       "guide_lambda": None})
    assert solver.missing() == [] and ds.missing_base() == []  # the solver cache is shared
    for i in range(2):
        s, t = ds[i], solver[i]
        with torch.no_grad():
            ref = base_answer(base.eval(), t.field[None], t.mask[None], t.geometry[0], t.init[None], 4)[0]
            start = base.initial_estimate(t.field[None], t.mask[None], t.geometry)  # TV again
            own = [x.apply(base(x.apply(t.field[None]), x.apply(t.mask[None]), x.geometry(t.geometry[0]),
                                init=x.apply(start))) for x in FLIPS[:4]]
        torch.testing.assert_close(s.init[:1], ref)
        torch.testing.assert_close(s.init[:1], (sum(own) / 4)[0], rtol=1e-4, atol=1e-5)
        assert (s.init[:1] - t.init).abs().max() > 1e-4
        guide = residual_guide(s.field[None], s.mask[None], s.geometry, s.init[None, :1], 0.02)[0]
        torch.testing.assert_close(s.init[1:], guide)
    # other base weights, other flips: another folder; a base trained on another start: refused
    _, path2 = _base(tmp_path / "b2", seed=1)
    assert PrecomputedDataset(tmp_path / "cache", **{**args, "base": path2}).base_folder != ds.base_folder
    assert PrecomputedDataset(tmp_path / "cache", **{**args, "base_flips": 2}).base_folder != ds.base_folder
    with pytest.raises(ValueError, match="starts from"):
        PrecomputedDataset(tmp_path / "cache", **{**args, "init": "tv", "init_params": {"lam": 1e-3}})


def test_cascade_of_a_tikhonov_base_needs_no_solver_cache(tmp_path):
    """Any network can be the base; the head's inputs keep the base's geometry awareness."""
    cfg = {"_target_": "qsmnet.models.QSMUNet", **SMALL}
    mio.save_weights(QSMUNet(**SMALL), cfg, tmp_path / "tik")
    net = QSMCascade(str(tmp_path / "tik"), **SMALL).eval()
    f, m, g = _sample(geom=Geometry((20, 18, 16), (1.0, 1.0, 2.0), (0.5, 0.0, 0.866)))
    with torch.no_grad():
        out = net(f, m, (g,))
    assert out.shape == f.shape and torch.isfinite(out).all() and out[m == 0].abs().max() == 0


def test_a_cascade_can_be_the_base_of_another(tmp_path):
    """Three stages: the dataset's cached answer of a two-stage base is what inference computes."""
    from qsmnet.inference.network import run_network

    _, path = _base(tmp_path)
    two = QSMCascade(path, guide_lambda=0.02, base_flips=2, **SMALL).eval()
    cfg = {"_target_": "qsmnet.models.QSMCascade", "base": path, "guide_lambda": 0.02, "base_flips": 2,
           **SMALL}
    mio.save_weights(two, cfg, tmp_path / "two")
    ds = PrecomputedDataset(tmp_path / "cache", simulation=SIM, init=None, volumes=1, seed=5, workers=1,
                            augment=False, base=str(tmp_path / "two"), base_flips=2, guide_lambda=0.02)
    assert ds.spec["init"] == "tv" and ds.spec["init_params"] == TV  # the innermost base's start
    ds.prepare(progress=False)
    s = ds[0]
    with torch.no_grad():
        ref = run_network(two, s.field[None], s.mask[None], s.geometry[0], {"mode": "whole", "roi": None},
                          flips=2)
    torch.testing.assert_close(s.init[None, :1], ref, rtol=1e-4, atol=1e-5)
    three = QSMCascade(str(tmp_path / "two"), guide_lambda=0.02, **SMALL).eval()
    assert isinstance(three.base.base, QSMUNet)
    for k, v in two.head.state_dict().items():  # the new head starts from the last stage's
        torch.testing.assert_close(three.head.state_dict()[k], v)
    with torch.no_grad():
        assert torch.isfinite(three(s.field[None], s.mask[None], s.geometry)).all()
