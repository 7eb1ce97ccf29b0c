"""``train(cfg)``: build data, network, loss and Trainer from a composed Hydra config and fit.

A plain function (``qsmnet-train`` only calls it), so tests compose configs with CPU-sized overrides.
After fitting, the best checkpoint's network (or the last state when no checkpoint was written,
e.g. under ``fast_dev_run``) is exported as ``<output_dir>/weights/<name>.safetensors`` + ``.json``
(see :mod:`qsmnet.models.io`), and also to ``export_to`` when that is set. When a best checkpoint was
chosen, the final step's network is also written as ``<output_dir>/weights/<name>_last`` (``final_step``
in its JSON): the one to score when the validation set is not the target data.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def _instantiate_all(group) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c) for c in group.values() if c is not None and "_target_" in c]


def _hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _load_best(net: torch.nn.Module, ckpt_path: str) -> None:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})


def export_checkpoint(ckpt_path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Export a Lightning checkpoint of :class:`QSMLitModule` as shipped-style weights.

    For a run that did not reach its own export (stopped, killed, out of time): the checkpoint
    carries the resolved run config, so the network is rebuilt from ``config["model"]`` alone.

    Args:
        ckpt_path: the ``.ckpt`` file (loaded with ``weights_only=True``).
        dest: path stem of the ``.safetensors`` + ``.json`` to write (default: the run's
            ``weights/<name>``, next to its ``checkpoints/`` folder).

    Returns:
        The written ``.safetensors`` path. The JSON records ``steps`` (the checkpoint's global
        step), ``wall_time_s`` (from the run folder's creation to the checkpoint's write) and
        ``best_checkpoint``; validation metrics are those the checkpoint callback saw.
    """
    from qsmnet.models.io import build_network, save_weights

    ckpt_path = Path(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    config = (ckpt.get("hyper_parameters") or {}).get("config")
    if not config or "model" not in config:
        raise ValueError(f"{ckpt_path} carries no run config (not a qsmnet training checkpoint)")
    net = build_network(config["model"])
    _load_best(net, str(ckpt_path))
    run_dir = ckpt_path.parent.parent
    started = run_dir / ".hydra" / "config.yaml"
    wall = ckpt_path.stat().st_mtime - started.stat().st_mtime if started.exists() else None
    metrics = {}
    for cb_state in (ckpt.get("callbacks") or {}).values():
        if isinstance(cb_state, dict) and cb_state.get("best_model_score") is not None:
            metrics[str(cb_state.get("monitor"))] = float(cb_state["best_model_score"])
    name = str(config.get("name") or type(net).__name__.lower())
    summary = {
        "name": name,
        "steps": int(ckpt.get("global_step", 0)),
        "wall_time_s": None if wall is None else round(wall, 1),
        "hardware": None,  # the run's hardware is not in the checkpoint (state it in the model card)
        "best_checkpoint": str(ckpt_path),
        "init_from": config.get("init_from"),
        "metrics": metrics,
        "train_config": config,
    }
    dest = Path(dest) if dest is not None else run_dir / "weights" / name
    return save_weights(net, config["model"], dest, extra=summary)


def train(cfg) -> dict[str, float]:
    """Train a network as configured and return the final metrics (floats keyed like ``val/nrmse``).

    Config keys used (see ``qsmnet/conf/train.yaml``): ``seed``, ``data``, ``model``, ``loss``,
    ``optimizer``, ``scheduler``, ``scheduler_interval``, ``trainer``, ``callbacks``, ``logger``,
    ``init_from`` (shipped weights name or path to start from), ``ckpt_path`` (Lightning checkpoint
    to resume the whole training state from), ``test``, ``name``, ``paths.output_dir``, ``export_to``,
    ``smoke`` (``debug=smoke``: tiny data, see :mod:`qsmnet.training.smoke`).
    """
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from qsmnet.models.io import build_network, load_grown, load_network, save_weights

    from .module import QSMLitModule

    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("smoke"):
        from .smoke import shrink_data

        shrink_data(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    # Plain containers (not DictConfig) in the hyperparameters keep checkpoints weights_only-loadable.
    datamodule = instantiate(cfg.data, _convert_="all")
    net = build_network(cfg.model)
    if cfg.get("init_from"):
        src, _ = load_network(cfg.init_from)
        grown = load_grown(net, src.state_dict())
        log.info("initialised the network from %s%s", cfg.init_from,
                 f" (new input channels zero in {', '.join(grown)})" if grown else "")
    module = QSMLitModule(
        net=net,
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        scheduler_interval=cfg.get("scheduler_interval", "step"),
        log_images=cfg.get("log_images", True),
        config=resolved,
    )
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    if not cfg.trainer.get("enable_progress_bar", True):  # nor a progress bar with the bar turned off
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    t0 = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    wall_s = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}

    ckpt_cb = trainer.checkpoint_callback
    best = getattr(ckpt_cb, "best_model_path", "") if ckpt_cb is not None else ""
    if cfg.get("test"):
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        metrics.update({k: float(v) for k, v in (results[0] if results else {}).items()})
    stem = str(cfg.get("name") or type(net).__name__.lower())
    dest = [out / "weights" / stem]
    if cfg.get("export_to"):
        dest.append(Path(cfg.export_to))
    summary = {
        "name": cfg.get("name"),
        "steps": int(trainer.global_step),
        "wall_time_s": round(wall_s, 1),
        "hardware": _hardware(),
        "best_checkpoint": best or None,
        "init_from": cfg.get("init_from"),
        "metrics": metrics,
        "train_config": resolved,
    }
    if best and trainer.is_global_zero:
        # the final step's weights too: the best checkpoint by validation is what ships, but when the
        # validation set is not the target data the last step is the one to score (and ModelCheckpoint's
        # last.ckpt is only refreshed together with a new best)
        final = {**summary, "best_checkpoint": None, "final_step": True}
        last = save_weights(net, resolved["model"], out / "weights" / f"{stem}_last", extra=final)
        log.info("final step's weights: %s", last)
    if best:
        _load_best(net, best)

    if trainer.is_global_zero:
        for d in dest:
            save_weights(net, resolved["model"], d, extra=summary)
            log.info("exported weights to %s.safetensors", d)
    return metrics
