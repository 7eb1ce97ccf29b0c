"""LightningDataModule over simulated and NIfTI-folder datasets, built from Hydra config."""

from __future__ import annotations

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, IterableDataset

from .sample import collate
from .simulated import SimulatedQSMDataset


def _plain(d):
    """A Hydra DictConfig (or None) as a plain dict."""
    if d is None:
        return None
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(d, DictConfig):
            return OmegaConf.to_container(d, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return dict(d)


def build_dataset(spec: dict, *, validation: bool = False):
    """A dataset from a config dict: ``{"folder": path, ...}`` gives a :class:`NiftiFolderDataset`
    (other keys are its kwargs); ``{"cache_dir": path, ...}`` a :class:`PrecomputedDataset`
    (validation: whole volumes, no augmentation); anything else a :class:`SimulatedQSMDataset` (for
    validation, ``resample_each_epoch`` defaults to False so every epoch sees the same samples)."""
    spec = dict(spec)
    if "folder" in spec:
        from .folder import NiftiFolderDataset

        return NiftiFolderDataset(spec.pop("folder"), **spec)
    if "cache_dir" in spec:
        from .precomputed import PrecomputedDataset

        if validation:
            spec.setdefault("patch_size", None)
            spec.setdefault("augment", False)
        return PrecomputedDataset(**spec)
    if validation:
        spec.setdefault("resample_each_epoch", False)
        spec.setdefault("augment", False)
    return SimulatedQSMDataset(**spec)


def _entries(spec: dict) -> list:
    """The simulation entries of a precomputed spec (entry k is simulated with seed + k)."""
    sims = spec.get("simulation") or [{}]
    return list(sims) if isinstance(sims, list | tuple) else [sims]


def extra_specs(train: dict, extra: dict | None) -> dict[str, dict]:
    """The full specs of the extra training sets: each of ``extra``'s entries overrides keys of
    ``train`` (typically ``seed`` and ``volumes``), and its ``simulation_override`` dict updates
    every ``simulation`` entry (e.g. ``haemorrhage_prob: 1.0`` for a pathology-enriched set). The
    main set keeps its own spec, and so its cache. Entries with ``volumes: 0`` are left out."""
    out = {}
    for name, over in (extra or {}).items():
        spec = with_simulation_override({**train, **dict(over or {})})
        if int(spec.get("volumes", 1)) > 0:
            out[str(name)] = spec
    return out


def with_simulation_override(spec: dict) -> dict:
    """``spec`` with its ``simulation_override`` key (if any) merged into every simulation entry
    and removed: how an extra training set, or validation on another profile, changes the
    simulation while keeping the rest of the spec."""
    spec = dict(spec)
    sim_over = dict(spec.pop("simulation_override", None) or {})
    if sim_over:
        spec["simulation"] = [{**dict(e), **sim_over} for e in _entries(spec)]
    return spec


def _check_held_out(train: dict, val: dict | None, what: str = "validation") -> None:
    """Precomputed validation volumes must come from other seeds than the training ones (entry k of
    a spec uses ``seed + k``), or validation would score volumes the network trained on (and an
    extra training set would repeat the main set's heads)."""
    if not train or not val or "cache_dir" not in train or "cache_dir" not in val:
        return
    seeds = [{int(s.get("seed", 0)) + k for k in range(len(_entries(s)))} for s in (train, val)]
    if seeds[0] & seeds[1]:
        raise ValueError(f"{what} seeds {sorted(seeds[1])} overlap the training seeds "
                         f"{sorted(seeds[0])}: give data.{'val' if what == 'validation' else what} "
                         "another seed")


class QSMDataModule(L.LightningDataModule):
    """Train/validation data for QSM networks.

    Args:
        train: kwargs of :class:`SimulatedQSMDataset`, or ``{"folder": path, ...}``.
        val: the same for validation; None derives 16 fixed samples from ``train`` (seed + 1).
            Simulated validation repeats the same samples every epoch and is not augmented.
        batch_size: training batch size.
        num_workers: DataLoader workers (persistent, so the simulation's epoch counter and
            cached brains survive between epochs).
        val_batch_size: validation batch size (default: ``batch_size`` for simulated data, 1 for
            folders, whose volumes may differ in shape).
        pin_memory: pin host memory (for CUDA training).
        train_extra: named extra training sets concatenated with ``train``, each given as the keys
            it changes in ``train`` plus an optional ``simulation_override`` for every simulation
            entry (:func:`extra_specs`): e.g. ``{"pathology": {"seed": 7010, "volumes": 48,
            "simulation_override": {"haemorrhage_prob": 1.0}}}``. Each has its own cache, so adding
            one leaves the main set's cache valid; its seeds must avoid validation's too.
            ``val`` takes a ``simulation_override`` the same way (validation on another profile).
    """

    def __init__(self, train: dict | None = None, val: dict | None = None, batch_size: int = 4,
                 num_workers: int = 0, val_batch_size: int | None = None, pin_memory: bool = False,
                 train_extra: dict | None = None):
        super().__init__()
        self.train_spec = _plain(train) or {}
        self.extra_specs = extra_specs(self.train_spec, _plain(train_extra))
        self.val_spec = _plain(val)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_batch_size = val_batch_size
        self.pin_memory = bool(pin_memory)
        self.train_set = None
        self.val_set = None
        self.save_hyperparameters()

    def prepare_data(self) -> None:
        """Fill the caches of precomputed datasets (once per node, before ``setup``)."""
        specs = [(self.train_spec, False), *((s, False) for s in self.extra_specs.values()),
                 (self._val_spec(), True)]
        for spec, val in specs:
            if spec and "cache_dir" in spec:
                build_dataset(spec, validation=val).prepare()

    def _val_spec(self) -> dict:
        """The validation spec, derived from the training one when not given."""
        if self.val_spec is not None:
            return with_simulation_override(self.val_spec)
        spec = {**self.train_spec, "seed": int(self.train_spec.get("seed", 0)) + 1, "length": 16}
        if "cache_dir" in spec:  # 4 whole volumes, seeds past the training entries' (seed + k)
            spec["seed"] = int(self.train_spec.get("seed", 0)) + len(_entries(self.train_spec))
            for k in ("length", "patch_size", "patches_per_volume"):
                spec.pop(k, None)
            spec["volumes"] = 4
        return spec

    def setup(self, stage: str | None = None) -> None:
        for spec in (self.train_spec, *self.extra_specs.values()):
            _check_held_out(spec, self._val_spec())
        for name, spec in self.extra_specs.items():
            _check_held_out(self.train_spec, spec, what=f"train_extra.{name}")
        if self.train_set is None:
            sets = [build_dataset(s) for s in (self.train_spec, *self.extra_specs.values())]
            self.train_set = sets[0] if len(sets) == 1 else ConcatDataset(sets)
        if self.val_set is None:
            self.val_set = build_dataset(self._val_spec(), validation=True)

    def _loader(self, ds, batch_size: int, shuffle: bool = False) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, num_workers=self.num_workers, collate_fn=collate,
                          persistent_workers=self.num_workers > 0, pin_memory=self.pin_memory,
                          shuffle=shuffle and not isinstance(ds, IterableDataset))

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        bs = self.val_batch_size
        if bs is None:
            bs = self.batch_size if isinstance(self.val_set, SimulatedQSMDataset) else 1
        return self._loader(self.val_set, int(bs))
