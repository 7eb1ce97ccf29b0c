"""``debug=smoke``: shrink any experiment's data config so that training takes seconds.

Applied by :func:`qsmnet.training.train` when the config has a ``smoke`` section (see
``qsmnet/conf/debug/smoke.yaml``). Works on both kinds of data spec that :class:`qsmnet.data.QSMDataModule`
takes: on-the-fly simulation (``phantom``, ``shape``, ``length``) and precomputed whole volumes
(``cache_dir``, ``volumes``, ``simulation``). The model is left as the experiment has it.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict


def _grid(shape, small) -> list[int]:
    """``small`` for a cubic-ish spec; for a spec with thin slices (z < x), half of ``small``'s z."""
    s = list(shape) if not isinstance(shape, int) else [shape] * 3
    z = small[2] if s[2] >= s[0] else max(8, small[2] // 2)
    return [int(small[0]), int(small[1]), int(z)]


def _patch(patch, grid, bound) -> list[int] | None:
    if patch is None:
        return None
    p = [patch] * 3 if isinstance(patch, int) else list(patch)
    return [int(min(a, b, g)) for a, b, g in zip(p, bound, grid, strict=True)]


def _shrink_sim(spec: DictConfig, smoke: DictConfig, n: int) -> None:
    spec.shape = _grid(spec.get("shape", smoke.shape), smoke.shape)
    if "patch_size" in spec:
        spec.patch_size = _patch(spec.patch_size, spec.shape, smoke.patch_size)
    if "pad" in spec:
        spec.pad = min(int(spec.pad), 8)
    spec.length = n


def shrink_data(cfg: DictConfig) -> None:
    """Shrink ``cfg.data`` in place per ``cfg.smoke`` (volumes, length, shape, patch_size, cache_dir)."""
    smoke = cfg.smoke
    with open_dict(cfg):
        cfg.data.num_workers = 0
        for split, n in (("train", None), ("val", 1)):
            spec = cfg.data.get(split)
            if spec is None:
                continue
            if "simulation" in spec:  # precomputed
                sims = spec.simulation
                sims = list(sims) if not isinstance(sims, DictConfig) else [sims]
                small = []
                for s in sims:
                    s = DictConfig(dict(s))
                    s.shape = _grid(s.get("shape", smoke.shape), smoke.shape)
                    small.append(s)
                spec.simulation = small
                spec.volumes = int(n or smoke.volumes)
                spec.workers = 1
                spec.cache_dir = smoke.cache_dir
                if spec.get("patch_size") is not None:
                    grid = [min(s.shape[a] for s in small) for a in range(3)]
                    spec.patch_size = _patch(spec.patch_size, grid, smoke.patch_size)
                if "patches_per_volume" in spec:
                    spec.patches_per_volume = 1
            else:
                _shrink_sim(spec, smoke, int(n or smoke.length))
