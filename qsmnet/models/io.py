"""Save and load network weights without pickles: safetensors state dict + JSON config.

A saved network is two files side by side:

- ``<name>.safetensors``: the state dict (tensors only; loading cannot run code);
- ``<name>.json``: ``{"model": <resolved Hydra model config with _target_>, ...extra}``, e.g. the
  training summary. The network is rebuilt with ``hydra.utils.instantiate(meta["model"])``, so
  inference needs no hand-written architecture code.

Shipped weights live in ``qsmnet/weights/`` and are addressed by name (``load_network("lpcnn")``).
Lightning checkpoints (``.ckpt``) written by ``qsmnet.training`` are also accepted; they are read
with ``torch.load(weights_only=True)`` and carry the resolved config under ``hyper_parameters``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

#: Folder of the weights shipped inside the package.
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"

_TARGET_PREFIX = "qsmnet.models."


def _plain(cfg) -> dict:
    if isinstance(cfg, dict):
        return cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def build_network(model_cfg) -> nn.Module:
    """Instantiate a network from its model config (a dict or DictConfig with ``_target_``).

    Only classes under ``qsmnet.models`` are accepted, so a weights file cannot make the loader
    construct arbitrary objects.
    """
    from hydra.utils import instantiate

    cfg = _plain(model_cfg)
    target = str(cfg.get("_target_", ""))
    if not target.startswith(_TARGET_PREFIX):
        raise ValueError(f"model config _target_ must be a class in {_TARGET_PREFIX}*, got {target!r}")
    _check_nested_targets(cfg)
    return instantiate(cfg, _convert_="all")


def _check_nested_targets(cfg) -> None:
    """Nested configs (a cascade's ``base``) are instantiated too: hold them to the same rule."""
    items = cfg.items() if isinstance(cfg, dict) else enumerate(cfg) if isinstance(cfg, list) else ()
    for k, v in items:
        if k == "_target_" and not str(v).startswith(_TARGET_PREFIX):
            raise ValueError(f"model config _target_ must be a class in {_TARGET_PREFIX}*, got {v!r}")
        _check_nested_targets(v)


def save_weights(net: nn.Module, model_cfg, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``path.safetensors`` and ``path.json`` (``path`` without suffix; parents created).

    Args:
        net: the trained network.
        model_cfg: its resolved model config (dict or DictConfig) with ``_target_``.
        path: destination stem, e.g. ``qsmnet/weights/lpcnn``.
        extra: JSON-serialisable extras stored next to ``model`` (training summary, metrics).

    Returns:
        The path of the ``.safetensors`` file.
    """
    from safetensors.torch import save_file

    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    st = stem.with_name(stem.name + ".safetensors")
    save_file(state, str(st))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(st, 0o666 & ~umask)  # safetensors writes 0600; give the usual permissions
    model_cfg = _plain(model_cfg)
    if hasattr(net, "portable_config"):  # e.g. a cascade names its base by config, not by file
        model_cfg = net.portable_config(model_cfg)
    meta = {"model": model_cfg, **(extra or {})}
    stem.with_name(stem.name + ".json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return st


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """The weights file for a shipped name (``"lpcnn"``) or a path (stem, .safetensors or .ckpt)."""
    p = Path(name_or_path)
    if p.suffix == ".ckpt" and p.is_file():
        return p
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    candidates = [stem.with_name(stem.name + ".safetensors")]
    if len(p.parts) == 1:  # a bare name: also look among the shipped weights
        candidates.append(WEIGHTS_DIR / f"{stem.name}.safetensors")
    for cand in candidates:
        if cand.is_file() and cand.with_suffix(".json").is_file():
            return cand
    shipped = sorted(q.stem for q in WEIGHTS_DIR.glob("*.safetensors"))
    raise FileNotFoundError(
        f"no network weights at {str(name_or_path)!r} (need .safetensors + .json, or a .ckpt); "
        f"shipped: {', '.join(shipped) or 'none'}"
    )


def load_grown(net: nn.Module, state: dict) -> list[str]:
    """Load ``state`` into ``net``, allowing ``net`` more input channels than ``state`` was trained with.

    A tensor whose shape differs only in dim 1 (a convolution's input channels) and is larger in
    ``net`` gets the old weights in its first channels and zeros in the new ones, so the grown
    network computes exactly what the old one did until training uses the new inputs (e.g. a U-Net
    given a guide channel, ``QSMUNet(guide_lambda=...)``). Parameters under the network's
    ``grown_branches`` prefixes that ``state`` lacks (a branch whose output starts at zero, e.g.
    ``QSMUNet(refine_channels=...)``) keep their initialisation. Anything else must match exactly.

    Returns:
        The names of the grown tensors.
    """
    own = net.state_dict()
    grown, fixed = [], {}
    branches = tuple(getattr(net, "grown_branches", ()))
    for k, t in own.items():
        if k not in state and branches and k.startswith(branches):
            fixed[k] = t  # a branch the old network lacks keeps its own (zero-started) initialisation
            grown.append(k)
    for k, v in state.items():
        t = own.get(k)
        if t is not None and t.dim() == v.dim() >= 2 and t.shape[1] > v.shape[1] and \
                t.shape[:1] == v.shape[:1] and t.shape[2:] == v.shape[2:]:
            w = torch.zeros_like(t)
            w[:, : v.shape[1]] = v
            fixed[k] = w
            grown.append(k)
        else:
            fixed[k] = v
    net.load_state_dict(fixed)
    return grown


def load_network(name_or_path: str | os.PathLike, map_location="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a network from saved weights.

    Args:
        name_or_path: a shipped name (see :func:`available`), a ``.safetensors``/``.json`` stem,
            or a Lightning ``.ckpt`` from ``qsmnet-train``.
        map_location: device of the loaded tensors.

    Returns:
        ``(net, meta)``: the network in eval mode and the JSON metadata (``meta["model"]`` is the
        model config).
    """
    path = resolve_weights(name_or_path)
    if path.suffix == ".ckpt":
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
        meta = dict(ckpt.get("hyper_parameters", {}).get("config") or {})
        if "model" not in meta:
            raise ValueError(f"{path} carries no model config (hyper_parameters.config.model)")
        state = {k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    else:
        from safetensors.torch import load_file

        meta = json.loads(path.with_suffix(".json").read_text())
        state = load_file(str(path), device=str(map_location))
    net = build_network(meta["model"])
    net.load_state_dict(state)
    return net.eval(), meta


def available() -> list[str]:
    """Names of the networks shipped in ``qsmnet/weights``."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file())
