"""Simulated volumes with an expensive initial estimate (e.g. TV) computed once and cached on disk.

A network that refines an iterative classical solution (``QSMUNet(init="tv")``) cannot afford the
solver at every training step, and must not run it on patches: the estimate of a patch (whose field
holds sources outside it) is not the estimate of the same voxels in the whole volume, which is what
inference computes. So each whole volume is simulated and solved once, written to a cache folder,
and training cuts random patches from (chi, field, mask, estimate) of the whole volume.

The cache lives in ``cache_dir/<hash of the spec>/``: any change of the simulation, its seed, the
solver or its parameters gives a new folder, never a stale reuse. ``prepare()`` (called by
``QSMDataModule.prepare_data``, i.e. once per node before training) fills in missing volumes with
``workers`` processes; volume ``i`` depends only on the spec, so the cache is reproducible. A folder
for a new estimate of an already simulated set (same simulation and seed, another solver or parameter)
takes chi, field and mask from the sibling folder that holds them and only solves: simulating a head
costs 13-30 s, its Tikhonov estimate about one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qsmnet.physics import Geometry

from .augment import check_scale_range, contrast_factor, random_transform
from .sample import QSMSample
from .simulated import SimulatedQSMDataset, _triple, random_crop


def _spec_hash(spec: dict) -> str:
    """Hash of what a volume depends on: volume ``i`` does not depend on how many there are, so a
    larger set reuses a smaller one's files."""
    key = {k: v for k, v in spec.items() if k != "volumes"}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _make_volume(spec: dict, indices: Sequence[int], folder: str, threads: int) -> None:
    """Simulate and solve volumes ``indices`` of ``spec`` into ``folder`` (runs in a worker)."""
    from qsmnet.solvers import SOLVERS

    torch.set_num_threads(max(1, threads))
    specs = spec["simulation"]
    sims = [_simulation(sp, spec["volumes"], spec["seed"] + k) for k, sp in enumerate(specs)]
    donors = _donors(Path(folder), spec)
    for i in indices:
        path = Path(folder) / f"vol_{i:05d}.pt"
        if path.exists():
            continue
        name = path.name
        donor = next((d / name for d in donors if (d / name).exists()), None)
        if donor is not None:
            d = torch.load(donor, map_location="cpu", weights_only=True, mmap=True)  # skips its estimate
            vol = {k: d[k] for k in ("chi", "field", "mask", "voxel_size", "b0_dir", "noise_std")}
        else:
            s = sims[i % len(sims)].sample(i // len(sims), 0)
            g = s.geometry[0]
            vol = {"chi": s.chi, "field": s.field, "mask": s.mask.to(torch.bool),
                   "voxel_size": list(g.voxel_size), "b0_dir": list(g.b0_dir),
                   "noise_std": float(s.meta.get("noise_std") or 0.0)}
        if spec["init"] is not None:
            g = Geometry(tuple(vol["field"].shape[-3:]), tuple(vol["voxel_size"]), tuple(vol["b0_dir"]))
            with torch.no_grad():
                est = SOLVERS[spec["init"]](vol["field"][None], vol["mask"][None].float(), (g,),
                                            **spec["init_params"])[0]
            vol["init"] = est.float()
        tmp = path.with_suffix(".tmp")
        torch.save(vol, tmp)
        os.replace(tmp, path)


def _donors(folder: Path, spec: dict) -> list[Path]:
    """Sibling cache folders of the same simulated volumes (same simulation and seed, any estimate)."""
    same = json.loads(json.dumps({"simulation": spec["simulation"], "seed": spec["seed"]}))
    out = []
    for other in sorted(folder.parent.glob("*/spec.json")):
        if other.parent == folder:
            continue
        try:
            o = json.loads(other.read_text())
        except (OSError, ValueError):
            continue
        if {"simulation": o.get("simulation"), "seed": o.get("seed")} == same:
            out.append(other.parent)
    return out



def _simulation(sp: dict, volumes: int, seed: int):
    """The whole-volume simulation of one ``simulation`` entry: ``phantom: head`` gives a
    :class:`~qsmnet.data.head.HeadSimulation` (field after acquisition and background removal),
    any other phantom a :class:`SimulatedQSMDataset`."""
    if sp.get("phantom") == "head":
        from .head import HeadSimulation

        return HeadSimulation(**sp, seed=seed)
    return SimulatedQSMDataset(**sp, patch_size=None, augment=False, length=volumes, seed=seed)


def _bar(items, desc: str, enabled: bool, total: int | None = None):
    """A tqdm progress bar on stderr (disabled when ``enabled`` is false)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, disable=not enabled, unit="vol", dynamic_ncols=True)

class PrecomputedDataset(Dataset):
    """Patches (or whole volumes) of simulated samples with a cached initial estimate.

    Args:
        cache_dir: root of the cache (a subfolder per spec is used).
        simulation: keyword arguments of :class:`SimulatedQSMDataset` for the whole volumes, or of
            :class:`~qsmnet.data.head.HeadSimulation` with ``phantom: head``
            (``phantom``, ``shape``, ``voxel_size_range``, ``max_tilt_deg``, ``noise_range``, ...),
            or a list of them: volume ``i`` then comes from entry ``i % len(list)`` (e.g. 1 mm
            grids and 2 mm-slice grids of the same field of view).
        init: solver name of the estimate (:data:`qsmnet.solvers.SOLVERS`), as the network's ``init``;
            None, or ``"tikhonov"`` with no ``init_params`` (the closed form networks compute
            inside ``forward``, :func:`qsmnet.models.common.closed_form_init`), caches the
            simulated volumes alone (items then have ``init=None``, and the network computes its
            own input, as it does at inference).
        init_params: that solver's parameters, as the network's ``init_params``.
        volumes: number of whole volumes.
        seed: seed of the simulation.
        patch_size: patch edge(s) in voxels, or None for whole volumes.
        patches_per_volume: dataset items per volume (one random patch each).
        augment: random flips and permutations of ``permute_axes`` (the estimate is transformed with
            the other arrays: the solvers are equivariant under these grid symmetries).
        permute_axes: axes that augmentation may permute.
        min_mask_fraction: patches are redrawn (up to 10 times) while less of them is in the mask.
        source_patches: fraction of patches centred on a strong source instead (a voxel with
            ``|chi| >= source_threshold`` in the mask, drawn with probability proportional to
            ``|chi|``, by MONAI's ``weighted_patch_samples``): haemorrhages, veins and iron-rich
            nuclei are a small part of a head but carry most of its error. Default 0 (uniform).
        source_threshold: |chi| (ppm) of a strong source (default 0.2).
        scale_range: (lo, hi): multiply chi, field and the estimate (and the guide) of each item
            by a factor drawn log-uniformly in [lo, hi] (default None: no scaling). The dipole
            model and the linear solvers are equivariant under it, so a network learns the
            same map at every contrast (real 3 T fields have ~1.5x the std of the simulated
            heads, docs/realism.md). A nonlinear estimate (``tikhonov`` with ``strong``, whose
            support is a threshold in ppm; TV with lambda chosen per subject) is scaled as
            cached, not re-solved: close to, not exactly, its answer on the scaled field.
        workers: processes used by :meth:`prepare` (default: all CPU cores).
        base: weights (shipped name or path) of a cascade's first stage: the estimate becomes that
            network's answer on the whole volume (computed from the cached solver estimate, once,
            by :meth:`prepare`); ``init``/``init_params`` must be the base's own (None: read them
            from the base's config).
        base_flips: grid flips averaged for the base's answer (as ``QSMCascade.base_flips``).
        guide_lambda: also give the network's residual-guide channel
            (:func:`qsmnet.models.common.residual_guide` with this Tikhonov weight, as the network's
            ``guide_lambda``), computed on the whole volume before cropping and kept in memory per
            volume (not cached on disk: it costs a few FFTs).

    Items are :class:`QSMSample` with ``init`` set (unless ``init`` is None); patches and
    augmentation draw from torch's random generator (seeded per worker by Lightning's
    ``seed_everything(workers=True)``).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        simulation: dict,
        init: str | None = "tv",
        init_params: dict | None = None,
        volumes: int = 200,
        seed: int = 0,
        patch_size: int | Sequence[int] | None = None,
        patches_per_volume: int = 1,
        augment: bool = True,
        permute_axes: Sequence[int] = (0, 1),
        min_mask_fraction: float = 0.2,
        source_patches: float = 0.0,
        source_threshold: float = 0.2,
        scale_range: Sequence[float] | None = None,
        workers: int | None = None,
        guide_lambda: float | None = None,
        base: str | None = None,
        base_flips: int = 4,
    ):
        super().__init__()
        self.guide_lambda = None if guide_lambda is None else float(guide_lambda)
        self._guides: dict[int, torch.Tensor] = {}
        sims = [dict(x) for x in simulation] if isinstance(simulation, list | tuple) else [dict(simulation)]
        if base is not None and init is None:
            init, init_params = _base_init(str(base))
        from qsmnet.models.common import closed_form_init

        if closed_form_init(init, init_params):
            # the network computes this estimate itself, on the patch it is given, as at inference
            if guide_lambda is not None:
                raise ValueError("a residual guide needs a precomputed estimate: give init_params "
                                 "(e.g. {lam: auto} for the tikhonov solver) or a solver such as tv")
            init = None
        if init is None and guide_lambda is not None:
            raise ValueError("PrecomputedDataset needs init (a solver name) for a residual guide")
        self.spec = {"simulation": sims, "init": None if init is None else str(init),
                     "init_params": dict(init_params or {}), "volumes": int(volumes), "seed": int(seed)}
        self.folder = Path(cache_dir) / _spec_hash(self.spec)
        self.patch_size = None if patch_size is None else _triple(patch_size, "patch_size")
        self.patches_per_volume = max(1, int(patches_per_volume))
        self.augment = bool(augment)
        self.permute_axes = tuple(int(a) for a in permute_axes)
        self.min_mask_fraction = float(min_mask_fraction)
        if not 0.0 <= float(source_patches) <= 1.0:
            raise ValueError(f"source_patches must be in [0, 1], got {source_patches}")
        self.source_patches = float(source_patches)
        self.source_threshold = float(source_threshold)
        self.scale_range = check_scale_range(scale_range)
        self.workers = int(workers or os.cpu_count() or 1)
        self.base = None if base is None else str(base)
        self.base_flips = int(base_flips)
        self.base_folder = None
        if self.base is not None:
            _check_base(self.base, self.spec)
            tag = _base_hash(self.base, self.base_flips)
            self.base_folder = self.folder.with_name(f"{self.folder.name}-{tag}")

    def path(self, i: int) -> Path:
        return self.folder / f"vol_{i:05d}.pt"

    def base_path(self, i: int) -> Path:
        return self.base_folder / f"base_{i:05d}.pt"

    def missing(self) -> list[int]:
        return [i for i in range(self.spec["volumes"]) if not self.path(i).exists()]

    def missing_base(self) -> list[int]:
        if self.base_folder is None:
            return []
        return [i for i in range(self.spec["volumes"]) if not self.base_path(i).exists()]

    def prepare(self, progress: bool = True) -> None:
        """Simulate and solve the volumes not in the cache yet (in ``workers`` processes), then
        run the base network on those without its answer (in this process)."""
        self._prepare_solver(progress)
        todo = self.missing_base()
        if not todo:
            return
        if progress:
            print(f"running {self.base} on {len(todo)} volumes into {self.base_folder}", flush=True)
        self.base_folder.mkdir(parents=True, exist_ok=True)
        from qsmnet.models.io import load_network

        net, _ = load_network(self.base)
        for i in _bar(todo, f"{self.base} answers", progress):
            d = self._load(i, base=False)
            geom = Geometry(tuple(d["field"].shape[-3:]), tuple(d["voxel_size"]), tuple(d["b0_dir"]))
            est = base_answer(net, d["field"][None], d["mask"][None].float(), geom, d["init"][None],
                              self.base_flips)
            path = self.base_path(i)
            tmp = path.with_suffix(".tmp")
            torch.save({"init": est[0].float()}, tmp)
            os.replace(tmp, path)

    def _prepare_solver(self, progress: bool) -> None:
        todo = self.missing()
        if not todo:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "spec.json").write_text(json.dumps(self.spec, indent=2, sort_keys=True) + "\n")
        specs = self.spec["simulation"]
        groups: dict[tuple[int, int], list[int]] = {}
        for i in todo:  # volumes sharing a brain stay in one worker, which simulates it once
            k, j = i % len(specs), i // len(specs)
            reuse = max(1, int(specs[k].get("brain_reuse", 1)))
            groups.setdefault((k, j // reuse), []).append(i)
        # Balance the work: each group goes to the least-loaded process (cost ~ voxels).
        chunks: list[list[int]] = [[] for _ in range(min(self.workers, len(groups)))]
        load = [0] * len(chunks)
        for (k, _), g in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            w = load.index(min(load))
            chunks[w].extend(g)
            load[w] += len(g) * math.prod(_triple(specs[k].get("shape", 64), "shape"))
        if progress:
            print(f"precomputing {len(todo)} volumes with {self.spec['init'] or 'no estimate'} into "
                  f"{self.folder} ({len(chunks)} processes)", flush=True)
        if len(chunks) == 1:
            _make_volume(self.spec, chunks[0], str(self.folder), torch.get_num_threads())
            return
        # Separate interpreters (not multiprocessing): safe whatever the caller's __main__ is.
        import subprocess
        import sys

        code = "from qsmnet.data.precomputed import worker_main; worker_main()"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(self.folder), ",".join(str(i) for i in c)])
                 for c in chunks]
        with _bar(None, f"{self.spec['init'] or 'simulated'} volumes", progress, total=len(todo)) as bar:
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                bar.update(len(todo) - len(self.missing()) - bar.n)
            bar.update(len(todo) - len(self.missing()) - bar.n)
        codes = [p.wait() for p in procs]
        if any(codes) or self.missing():
            raise RuntimeError(f"precomputing volumes into {self.folder} failed (exit codes {codes})")

    def __len__(self) -> int:
        return self.spec["volumes"] * self.patches_per_volume

    def _load(self, i: int, base: bool = True) -> dict:
        paths = [self.path(i)] + ([self.base_path(i)] if base and self.base_folder is not None else [])
        out = {}
        for path in paths:
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: call prepare() first (QSMDataModule does)")
            out.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        return out

    def __getitem__(self, k: int) -> QSMSample:
        i = int(k) // self.patches_per_volume
        d = self._load(i)
        arrays = [d["chi"], d["field"], d["mask"].to(torch.float32), d.get("init")]
        shape = tuple(arrays[0].shape[-3:])
        geom = Geometry(shape, tuple(d["voxel_size"]), tuple(d["b0_dir"]))
        if self.guide_lambda is not None:
            arrays[3] = torch.cat([arrays[3], self._guide(i, arrays[1], arrays[2], arrays[3], geom)])
        # numpy generator drawn from torch's (seeded per worker by Lightning)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        if self.patch_size is not None:
            sl = None
            if self.source_patches > 0 and rng.random() < self.source_patches:
                sl = source_crop(arrays[0][0], arrays[2][0], self.patch_size, rng, self.source_threshold)
            if sl is None:
                sl = random_crop(arrays[2][0], self.patch_size, rng, self.min_mask_fraction)
            arrays = [None if a is None else a[(slice(None), *sl)] for a in arrays]
            geom = geom.with_(shape=self.patch_size)
        if self.augment:
            out = tuple(arrays[0].shape[-3:])
            axes = [a for a in self.permute_axes if out[a] == out[self.permute_axes[0]]]
            t = random_transform(rng, flip=True, permute=True, axes=axes)
            arrays = [None if a is None else t.apply(a) for a in arrays]
            geom = t.geometry(geom)
        chi, field, mask, init = (None if a is None else a.contiguous().clone() for a in arrays)
        noise_std = d["noise_std"]
        if self.scale_range is not None:
            s = contrast_factor(rng, self.scale_range)
            chi, field = chi * s, field * s
            init = None if init is None else init * s
            noise_std = noise_std * s
        return QSMSample(field=field, mask=mask, geometry=(geom,), chi=chi, init=init,
                         meta={"volume": i, "noise_std": noise_std})


    def _guide(self, i: int, field, mask, est, geom: Geometry) -> torch.Tensor:
        if i not in self._guides:
            from qsmnet.models.common import residual_guide

            with torch.no_grad():
                g = residual_guide(field[None], mask[None], geom, est[None], self.guide_lambda)
            self._guides[i] = g[0]
        return self._guides[i]


def source_crop(chi: torch.Tensor, mask: torch.Tensor, patch_size, rng: np.random.Generator,
                threshold: float) -> tuple[slice, slice, slice] | None:
    """A patch of ``chi`` (X, Y, Z) centred on a voxel drawn with weight ``|chi|`` among those
    with ``|chi| >= threshold`` inside ``mask`` (centres are kept where the whole patch fits);
    None when there is no such voxel."""
    from monai.transforms.utils import weighted_patch_samples

    a = chi.abs() * (mask > 0)
    w = a * (a >= threshold)
    half = [p // 2 for p in patch_size]
    valid = tuple(slice(h, n - p + h) if n > p else slice(n // 2, n // 2 + 1)  # MONAI's centres
                  for h, n, p in zip(half, w.shape, patch_size, strict=True))
    if not bool((w[valid] > 0).any()):
        return None
    state = np.random.RandomState(int(rng.integers(0, 2**31 - 1)))
    centre = weighted_patch_samples(patch_size, w, 1, state)[0]
    start = [int(c) - h for c, h in zip(centre, half, strict=True)]
    return tuple(slice(a0, a0 + p) for a0, p in zip(start, patch_size, strict=True))


def _base_init(base: str) -> tuple[str, dict]:
    """The solver and parameters a base network starts from (from its saved config: weights JSON or
    checkpoint; for a cascade, its own base's, however that is given)."""
    from qsmnet.models.io import load_network

    model = load_network(base)[1]["model"]
    while isinstance(model.get("base"), dict):
        model = model["base"]
    if isinstance(model.get("base"), str):
        return _base_init(model["base"])
    return str(model.get("init")), dict(model.get("init_params") or {})


def _check_base(base: str, spec: dict) -> None:
    """The cached solver estimate must be the one the base network was trained to start from."""
    own = _base_init(base)
    if own != (spec["init"], spec["init_params"]):
        raise ValueError(f"base network {base!r} starts from {own[0]} {own[1]}, but the dataset caches "
                         f"{spec['init']} {spec['init_params']}: give it the base's init and init_params")


def _base_hash(base: str, flips: int) -> str:
    """Hash of a base network's weights file and flips: new weights give a new folder."""
    from qsmnet.models.io import resolve_weights

    h = hashlib.sha256(resolve_weights(base).read_bytes())
    h.update(f"flips={flips}".encode())
    return h.hexdigest()[:12]


def base_answer(net, field: torch.Tensor, mask: torch.Tensor, geom: Geometry, est: torch.Tensor,
                flips: int) -> torch.Tensor:
    """A network's whole-volume answer from its cached solver estimate ``est`` (1, 1, X, Y, Z),
    flip-averaged as inference does (:func:`qsmnet.inference.network.run_network`)."""
    from .augment import flip_average

    with torch.no_grad():
        init = _network_init(net, field, mask, geom, est)
        return flip_average(lambda f, m, g, i: net(f, m, g, init=i) * m, field, mask, geom, init, flips)


def _network_init(net, field, mask, geom: Geometry, est: torch.Tensor) -> torch.Tensor:
    """What ``net`` takes as ``init`` given the solver estimate (its ``guide`` of it; for a cascade,
    of its own base's answer, recursively)."""
    if getattr(net, "base", None) is not None:
        est = base_answer(net.base, field, mask, geom, est, net.base_flips)
    return net.guide(field, mask, geom, est) if hasattr(net, "guide") else est


def worker_main() -> None:
    """Worker process of :meth:`PrecomputedDataset.prepare`: argv = FOLDER INDICES (comma-separated)."""
    import sys

    folder, indices = sys.argv[1], [int(i) for i in sys.argv[2].split(",") if i]
    _make_volume(json.loads((Path(folder) / "spec.json").read_text()), indices, folder, 1)
