"""On-the-fly simulated training data: phantom -> random geometry -> field, as an IterableDataset."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from qsmnet.physics import Geometry
from qsmnet.sim import random_b0_dir, random_voxel_size, shapes_phantom, simulate

from .augment import check_scale_range, contrast_factor, random_transform
from .sample import QSMSample

PHANTOMS = ("shapes", "brain", "mixed")


def _triple(v, name: str) -> tuple[int, int, int]:
    t = (int(v),) * 3 if isinstance(v, (int, np.integer)) else tuple(int(x) for x in v)
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be a positive int or three of them, got {v}")
    return t


class SimulatedQSMDataset(IterableDataset):
    """Endless-style stream of simulated (field, chi, mask, geometry) samples, ``length`` per epoch.

    Each sample: a phantom on a ``shape`` grid with a random voxel size, a random B0 direction
    (uniform on the cap of tilts up to ``max_tilt_deg``), the field simulated on the whole grid
    (so patches keep the nonlocal contributions of sources outside them), noise of a std drawn
    uniformly from ``noise_range``, the switched imperfections, then a random crop of
    ``patch_size`` and a physics-aware flip/permutation (see :mod:`qsmnet.data.augment`).

    Reproducibility: sample ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, whatever the
    number of DataLoader workers (worker w takes the groups of samples with ``group % W == w``;
    a group is ``brain_reuse`` consecutive samples sharing one brain volume). With
    ``resample_each_epoch=False`` every epoch repeats epoch 0 (validation). The epoch counter
    advances on each ``iter()``; use persistent workers so it survives between epochs.

    Args:
        phantom: "shapes", "brain" or "mixed" (brain with probability ``brain_prob``).
        patch_size: int or 3 ints, or None for whole ``shape`` volumes.
        shape: grid (voxels) of the simulated volume.
        voxel_size_range: (low, high) voxel sizes in mm, each 3 numbers; axes 0 and 1 share a
            draw when their ranges agree. Default: 0.5-1.5 mm in-plane, 0.5-3 mm slices.
        max_tilt_deg: largest angle between B0 and the k axis.
        noise_range: (low, high) std of the Gaussian field noise in ppm.
        imperfections: switches passed to :func:`qsmnet.sim.simulate` (bools or probabilities).
        length: samples per epoch.
        seed: base seed.
        augment: apply random flips and permutations of ``permute_axes``.
        permute_axes: axes that augmentation may permute (default in-plane only, so B0 stays
            near the k axis as in real acquisitions).
        brain_reuse: consecutive samples that reuse one brain volume (different B0, noise,
            crop and augmentation each time), because a brain costs more than a field.
        brain_prob: probability of a brain group when ``phantom="mixed"``.
        brain_kwargs: extra keyword arguments of :func:`qsmnet.sim.brain_phantom`.
        min_mask_fraction: a patch is redrawn (up to 10 times) while less of it is in the mask.
        pad: padding of the forward dipole convolution (see :func:`qsmnet.physics.forward_field`).
        resample_each_epoch: draw new samples each epoch (training) or repeat (validation).
        scale_range: (lo, hi): multiply each sample's chi and field by a factor drawn
            log-uniformly in [lo, hi] (contrast augmentation, as
            :class:`~qsmnet.data.PrecomputedDataset`'s); default None.

    Yields:
        :class:`QSMSample` with (1, X, Y, Z) float32 field (ppm), mask, chi (ppm) and a 1-tuple
        geometry; ``meta`` holds ``phantom``, ``noise_std`` (ppm) and ``index``. ``chi`` is the
        true susceptibility; it may extend past ``mask`` when ``edge_errors`` erodes the mask.
    """

    def __init__(
        self,
        phantom: str = "shapes",
        patch_size: int | Sequence[int] | None = None,
        shape: int | Sequence[int] = (64, 64, 64),
        voxel_size_range: Sequence[Sequence[float]] = ((0.5, 0.5, 0.5), (1.5, 1.5, 3.0)),
        max_tilt_deg: float = 45.0,
        noise_range: Sequence[float] = (0.0, 0.005),
        imperfections: dict | None = None,
        length: int = 1000,
        seed: int = 0,
        augment: bool = True,
        permute_axes: Sequence[int] = (0, 1),
        brain_reuse: int = 8,
        brain_prob: float = 0.5,
        brain_kwargs: dict | None = None,
        min_mask_fraction: float = 0.2,
        pad=True,
        resample_each_epoch: bool = True,
        scale_range: Sequence[float] | None = None,
    ):
        super().__init__()
        if phantom not in PHANTOMS:
            raise ValueError(f"phantom must be one of {PHANTOMS}, got {phantom!r}")
        self.phantom = phantom
        self.shape = _triple(shape, "shape")
        self.patch_size = None if patch_size is None else _triple(patch_size, "patch_size")
        if self.patch_size and any(p > s for p, s in zip(self.patch_size, self.shape, strict=False)):
            raise ValueError(f"patch_size {self.patch_size} is larger than shape {self.shape}")
        lo, hi = voxel_size_range
        self.voxel_size_range = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
        self.max_tilt_deg = float(max_tilt_deg)
        self.noise_range = (float(noise_range[0]), float(noise_range[1]))
        self.imperfections = dict(imperfections or {})
        self.length = int(length)
        self.seed = int(seed)
        self.augment = bool(augment)
        self.permute_axes = tuple(int(a) for a in permute_axes)
        self.brain_reuse = max(1, int(brain_reuse)) if phantom != "shapes" else 1
        self.brain_prob = float(brain_prob)
        self.brain_kwargs = dict(brain_kwargs or {})
        self.min_mask_fraction = float(min_mask_fraction)
        self.pad = pad
        self.resample_each_epoch = bool(resample_each_epoch)
        self.scale_range = check_scale_range(scale_range)
        self._epoch = 0
        self._cache: tuple | None = None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose samples the next ``iter()`` yields."""
        self._epoch = int(epoch)

    @staticmethod
    def _worker() -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def __iter__(self):
        wid, nw = self._worker()
        epoch = self._epoch if self.resample_each_epoch else 0
        self._epoch += 1
        for i in range(self.length):
            if (i // self.brain_reuse) % nw == wid:
                yield self.sample(i, epoch)

    # -- one sample ------------------------------------------------------------------------------
    def _volume(self, group: int, epoch: int):
        """Phantom (and its voxel size, weight) of a group; brains are cached for reuse."""
        key = (epoch, group)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch, group, 1])
        kind = self.phantom
        if kind == "mixed":
            kind = "brain" if rng.uniform() < self.brain_prob else "shapes"
        vs = random_voxel_size(rng, *self.voxel_size_range)
        if kind == "brain":
            from qsmnet.sim.brain import brain_phantom

            ph = brain_phantom(self.shape, vs, rng, **self.brain_kwargs)
            vol = (kind, vs, ph)
            self._cache = (key, vol)
        else:
            vol = (kind, vs, None)
        return vol

    def sample(self, i: int, epoch: int = 0) -> QSMSample:
        """Sample ``i`` of epoch ``epoch`` (deterministic)."""
        kind, vs, ph = self._volume(i // self.brain_reuse, epoch)
        rng = np.random.default_rng([self.seed, epoch, i, 2])
        if ph is None:
            ph = shapes_phantom(self.shape, vs, rng)
        weight = None if ph.labels is None else (ph.info or {}).get("wm_weight")
        geom = Geometry(self.shape, vs, random_b0_dir(rng, self.max_tilt_deg))
        sim = simulate(ph.chi, ph.mask, geom, rng, noise_std=self.noise_range,
                       imperfections=self.imperfections, weight=weight, pad=self.pad)
        chi, field, mask = sim.chi, sim.field, sim.mask
        if self.patch_size is not None:
            sl = self._crop(mask, rng)
            chi, field, mask = chi[sl], field[sl], mask[sl]
            geom = geom.with_(shape=self.patch_size)
        if self.augment:
            out_shape = self.patch_size or self.shape
            axes = [a for a in self.permute_axes if out_shape[a] == out_shape[self.permute_axes[0]]]
            t = random_transform(rng, flip=True, permute=True, axes=axes)
            chi, field, mask = t.apply(chi), t.apply(field), t.apply(mask)
            geom = t.geometry(geom)
        noise_std = sim.noise_std
        if self.scale_range is not None:
            s = contrast_factor(rng, self.scale_range)
            chi, field, noise_std = chi * s, field * s, noise_std * s
        return QSMSample(
            field=field[None].contiguous(),
            mask=mask[None].contiguous(),
            geometry=(geom,),
            chi=chi[None].contiguous(),
            meta={"phantom": kind, "noise_std": noise_std, "index": i},
        )

    def _crop(self, mask: torch.Tensor, rng: np.random.Generator) -> tuple[slice, slice, slice]:
        return random_crop(mask, self.patch_size, rng, self.min_mask_fraction)


def random_crop(mask: torch.Tensor, patch_size, rng: np.random.Generator,
                min_mask_fraction: float) -> tuple[slice, slice, slice]:
    """A random patch of ``mask`` (X, Y, Z), redrawn (up to 10 times) while less than
    ``min_mask_fraction`` of it is inside the mask; the fullest draw wins if none qualifies."""
    best, best_frac = None, -1.0
    for _ in range(10):
        start = [int(rng.integers(0, n - p + 1)) for n, p in zip(mask.shape, patch_size, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(start, patch_size, strict=True))
        frac = float(mask[sl].mean())
        if frac > best_frac:
            best, best_frac = sl, frac
        if frac >= min_mask_fraction:
            break
    return best
