"""Training: fast_dev_run of every experiment, overfit one sample, checkpoint -> rebuild -> same output."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from qsmnet.data import QSMSample, collate
from qsmnet.models import QSMUNet
from qsmnet.models import io as mio
from qsmnet.physics import DipoleOperator, Geometry
from qsmnet.training import QSMLitModule, QSMLoss, train

CONF = Path(__file__).resolve().parents[1] / "qsmnet" / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# CPU-test sizes for any model group (the experiments' own sizes are for real training).
TINY_MODEL = {
    "lpcnn": ["model.iterations=2", "model.features=4", "model.depth=2"],
    "modl": ["model.iterations=2", "model.features=4", "model.depth=2", "model.cg_iters=2"],
    "unet": ["model.channels=[4,8,16]", "model.strides=[2,2]", "model.num_res_units=0"],
    "varnet": ["model.iterations=2", "model.features=4", "model.depth=2"],
    "cascade": ["model.channels=[4,8,16]", "model.strides=[2,2]", "model.num_res_units=0"],
    "cascade3": ["model.channels=[4,8,16]", "model.strides=[2,2]", "model.num_res_units=0"],
}


def make_cfg(tmp_path, overrides):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        del cfg.hydra
    return cfg


def test_configs_compose_for_every_group():
    assert {"lpcnn_brain", "unet_brain", "modl_brain"} <= set(EXPERIMENTS)
    for trainer in ("cpu", "gpu", "ddp"):
        cfg = make_cfg(Path("/nonexistent"), [f"trainer={trainer}"])
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 1
    cfg = make_cfg(Path("/nonexistent"), ["experiment=lpcnn_brain"])
    assert cfg.name == "lpcnn" and cfg.model._target_ == "qsmnet.models.LPCNN"
    assert cfg.scheduler.T_max == cfg.trainer.max_steps


def test_realfield2_training_heads_are_the_benchmark_profile():
    # conf/data/sim_head.yaml spells the profile out (its cache key); it must not drift from the code's
    from omegaconf import OmegaConf

    from qsmnet.sim.head import REAL_FIELD_PROFILE

    cfg = make_cfg(Path("/nonexistent"), ["data=sim_head"])
    params = OmegaConf.to_container(cfg.data.train_extra.realfield2.simulation_override.head_params)
    as_lists = json.loads(json.dumps(REAL_FIELD_PROFILE))
    assert params == as_lists


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run_every_experiment(experiment, tmp_path):
    model = experiment.split("_")[0]
    # Networks that start from an iterative solver, or from another network (a cascade's base),
    # train on the cached whole-volume estimate.
    own = make_cfg(tmp_path, [f"experiment={experiment}"]).model
    init = own.get("init", "tikhonov")
    tiny = ["data=tiny_precomputed", "data.train.volumes=2", "data.val.volumes=1"]  # not the experiment's
    data = (tiny if own.get("base") else ["data=tiny"] if init == "tikhonov"
            else [*tiny, "model.init_params.iterations=20"])
    cfg = make_cfg(
        tmp_path,
        [f"experiment={experiment}", "debug=fast_dev_run", *data, "data.train.patch_size=17",
         "logger=none", "init_from=null", *TINY_MODEL[model]],  # tiny models: no shipped weights fit
    )
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    assert 0 < metrics["val/nrmse"] < 1000
    # The exported weights rebuild the network from its stored config alone.
    net, meta = mio.load_network(tmp_path / "weights" / cfg.name)
    assert meta["steps"] == 1 and meta["model"]["_target_"] == cfg.model._target_


def _sample(seed: int, shape=(15, 13, 11), geom=None) -> QSMSample:
    g = torch.Generator().manual_seed(seed)
    chi = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape, generator=g), 3, 1, 1) * 0.3
    mask = torch.zeros(1, 1, *shape)
    mask[..., 2:-2, 2:-2, 2:-2] = 1
    geom = geom or Geometry(shape, (1.0, 1.0, 1.5), (0.2, 0.1, 1.0))
    field = DipoleOperator(geom).A(chi * mask)
    return QSMSample(field[0], mask[0], (geom,), (chi * mask)[0])


class _Repeat(torch.utils.data.Dataset):
    def __init__(self, sample, n):
        self.sample, self.n = sample, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.sample


def _loader(sample, n):
    return torch.utils.data.DataLoader(_Repeat(sample, n), batch_size=1, collate_fn=collate)


@pytest.mark.slow
def test_overfit_one_sample_loss_falls_tenfold():
    L.seed_everything(0)
    net = QSMUNet(channels=(8, 16, 32), strides=(2, 2), num_res_units=0)
    sample = _sample(0)
    module = QSMLitModule(net, QSMLoss(l1=1.0), functools.partial(torch.optim.Adam, lr=1e-2))
    batch = collate([sample])
    with torch.no_grad():
        first = module.loss(net(batch.field, batch.mask, batch.geometry), batch)[0].item()
    trainer = L.Trainer(max_steps=80, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=_loader(sample, 80))
    with torch.no_grad():
        last = module.loss(net(batch.field, batch.mask, batch.geometry), batch)[0].item()
    assert last < first / 10


def test_checkpoint_rebuild_identical_output(tmp_path):
    cfg = make_cfg(
        tmp_path,
        ["model=lpcnn", "data=tiny", "logger=tensorboard", "name=ck", "trainer.max_steps=2",
         "trainer.val_check_interval=1", "trainer.enable_progress_bar=false", *TINY_MODEL["lpcnn"]],
    )
    metrics = train(cfg)
    assert "val/nrmse" in metrics and "val/hfen" in metrics
    ckpts = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts, "ModelCheckpoint wrote nothing"
    best = next(c for c in ckpts if c.name != "last.ckpt")
    # Checkpoints hold plain data only: they load with weights_only=True and carry the config.
    raw = torch.load(best, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["config"]["model"]["_target_"] == "qsmnet.models.LPCNN"
    from_ckpt, _ = mio.load_network(best)
    exported, meta = mio.load_network(tmp_path / "weights" / "ck.safetensors")
    assert meta["best_checkpoint"] == str(best)
    # The final step's weights are exported beside the best checkpoint's.
    _, last_meta = mio.load_network(tmp_path / "weights" / "ck_last.safetensors")
    assert last_meta["steps"] == 2 and last_meta["final_step"] is True
    sample = collate([_sample(1, geom=Geometry((15, 13, 11), (0.9, 1.1, 2.0), (0.5, 0.0, 0.85)))])
    with torch.no_grad():
        a = from_ckpt(sample.field, sample.mask, sample.geometry)
        b = exported(sample.field, sample.mask, sample.geometry)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Training changed the weights (the export is not the initial network).
    init = mio.build_network(meta["model"])
    assert any((p - q).abs().max() > 0 for p, q in zip(init.parameters(), exported.parameters(), strict=True))
    # TensorBoard got scalars and the slice images.
    events = list((tmp_path / "tensorboard").rglob("events.out.tfevents*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent)).Reload()
    assert "val/slices_pred_truth_error" in acc.Tags()["images"]
    assert "val/nrmse" in acc.Tags()["scalars"]
    # init_from resumes from the exported weights (fine-tuning in a later session).
    cfg2 = make_cfg(
        tmp_path / "again",
        ["model=lpcnn", "data=tiny", "logger=none", "debug=fast_dev_run", "name=ck2",
         f"init_from={tmp_path / 'weights' / 'ck'}", "optimizer.lr=0", *TINY_MODEL["lpcnn"]],
    )
    train(cfg2)
    again, meta2 = mio.load_network(tmp_path / "again" / "weights" / "ck2")
    assert meta2["init_from"] == str(tmp_path / "weights" / "ck")
    with torch.no_grad():
        torch.testing.assert_close(again(sample.field, sample.mask, sample.geometry), b)
    json.dumps(meta2)  # the summary is plain JSON


def test_stop_file_ends_training_and_checkpoints_export(tmp_path):
    from qsmnet.training import export_checkpoint

    (tmp_path / "STOP").touch()  # conf/callbacks/default.yaml watches ${paths.output_dir}/STOP
    cfg = make_cfg(
        tmp_path,
        ["model=lpcnn", "data=tiny", "logger=none", "name=st", "trainer.max_steps=100",
         "trainer.val_check_interval=1", "trainer.enable_progress_bar=false",
         "+callbacks.stop_file.every_n_steps=1", *TINY_MODEL["lpcnn"]],
    )
    train(cfg)
    net, meta = mio.load_network(tmp_path / "weights" / "st")
    assert meta["steps"] == 1  # stopped after the first step, and still exported
    # a checkpoint exports to the same network, with its step count and config
    path = export_checkpoint(tmp_path / "checkpoints" / "last.ckpt", tmp_path / "exported")
    again, meta2 = mio.load_network(path)
    assert meta2["steps"] == 1 and meta2["model"] == meta["model"] and meta2["name"] == "st"
    sample = collate([_sample(2)])
    with torch.no_grad():
        torch.testing.assert_close(again(sample.field, sample.mask, sample.geometry),
                                   net(sample.field, sample.mask, sample.geometry), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no run config"):
        torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
        export_checkpoint(tmp_path / "bare.ckpt")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smoke_two_steps_every_experiment(experiment, tmp_path):
    """``debug=smoke``: the experiment's own model and data recipe, tiny data, two training steps."""
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", "debug=smoke"])
    own = make_cfg(tmp_path, [f"experiment={experiment}"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss_step"]))
    assert 0 < metrics["val/nrmse"] < 1000
    net, meta = mio.load_network(tmp_path / "weights" / cfg.name)
    assert meta["steps"] == 2
    assert meta["model"]["_target_"] == own.model._target_
    n_own = sum(p.numel() for p in mio.build_network(own.model).parameters())
    assert sum(p.numel() for p in net.parameters()) == n_own  # the experiment's model, not a tiny one
    if "volumes" in cfg.data.train:  # precomputed: the cache sits under the run, sized by smoke
        assert meta["train_config"]["data"]["train"]["volumes"] == cfg.smoke.volumes
        assert (tmp_path / "cache").is_dir()
