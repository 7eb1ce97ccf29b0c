"""Training volumes from whole simulated heads: the field a network meets after a real pipeline.

One volume: a real-size head (:func:`qsmnet.sim.head.head_phantom`: brain, CSF, skull, scalp,
air cavities, white-matter anisotropy, optional haemorrhages) on a fine grid, its total field in
air for a random B0 direction (:func:`qsmnet.sim.acquire.head_fields`, anisotropy and the
non-convolutional offsets included), a multi-echo acquisition at a random SNR with block
averaging onto the acquisition grid (e.g. 1 mm slice pairs for 1 x 1 x 2 mm,
:func:`qsmnet.sim.acquire.acquire`), then background-field removal
(:func:`qsmnet.phase.vsharp` or :func:`qsmnet.phase.pdf`) -> local field in the eroded brain
mask, cropped to its bounding box. The target is the brain's scalar chi (the mean of the
tensor, CSF = 0), as in benchmark v2's realistic tier (:mod:`qsmnet.sim.benchmark_v2`): what the
network learns to undo is the whole chain (residual background, non-dipolar offsets, anisotropy,
noise, dephasing), not a clean convolution.

A head costs ~10-40 s to draw, so ``brain_reuse`` consecutive volumes share one head (each with
its own B0 direction, SNR and noise). Volumes are made once and cached by
:class:`qsmnet.data.PrecomputedDataset` (``simulation: {phantom: head, ...}``); randomness comes
from ``numpy.random.default_rng([seed, group, TAG])`` (head) and ``[seed, index, TAG + 1]``
(acquisition), and ``seed`` may not be benchmark v2's, so training never sees a benchmark head.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qsmnet.physics import Geometry
from qsmnet.sim import random_b0_dir, random_voxel_size

from .sample import QSMSample
from .simulated import _triple

#: Last entropy word of the head simulation's generators (keeps them apart from other generators).
TAG = 7301
BFRS = ("vsharp", "pdf")


class HeadSimulation:
    """Deterministic whole-head training volumes (see the module docstring).

    Args:
        shape: fine (simulation) grid in voxels; it should hold the head (about 190 x 225 x 190
            mm), since tissue cut off by the grid becomes air.
        voxel_size_range: (low, high) fine voxel size in mm, 3 numbers each.
        factors: fine voxels averaged (complex signal) into one acquired voxel per axis, e.g.
            ``[1, 1, 2]`` for 2 mm slices from a 1 mm grid.
        max_tilt_deg: largest angle between B0 and the k axis.
        snr_range: (low, high) SNR of the acquisition (1 / noise std of the complex signal).
        bfr: background-field removal, "vsharp" or "pdf".
        haemorrhage_prob: probability that a head carries 1-2 haemorrhages.
        anisotropy, micro: include the WM tensor anisotropy / the non-convolutional offsets.
        oblique_bandlimit: Gaussian sigma (voxels) of the extracerebral sources when B0 is oblique
            to the grid (``head_fields(bandlimit=)``, docs/realism.md; benchmark v2 uses 0.7); None
            keeps them sharp, which leaves a ringing, non-harmonic background at oblique B0.
        brain_reuse: consecutive volumes drawn from one head.
        head_params: extra :func:`~qsmnet.sim.head.head_phantom` settings, e.g.
            :data:`~qsmnet.sim.head.REAL_FIELD_PROFILE` (``tissue_scale``, ``offset_textures``);
            default None: the generator's own (the shipped ``unet_head`` was trained on those).
        margin: voxels kept around the eroded mask's bounding box.
        seed: base seed (not :data:`qsmnet.sim.benchmark_v2.BENCHMARK_V2_SEED`).
        length: ignored (the dataset that holds this simulation sets how many volumes there are).
    """

    def __init__(
        self,
        shape: int | Sequence[int] = (160, 192, 160),
        voxel_size_range: Sequence[Sequence[float]] = ((1.0, 1.0, 1.0), (1.2, 1.2, 1.2)),
        factors: Sequence[int] = (1, 1, 1),
        max_tilt_deg: float = 45.0,
        snr_range: Sequence[float] = (20.0, 40.0),
        bfr: str = "vsharp",
        haemorrhage_prob: float = 0.2,
        anisotropy: bool = True,
        micro: bool = True,
        oblique_bandlimit: float | None = None,
        brain_reuse: int = 1,
        head_params: dict | None = None,
        margin: int = 6,
        seed: int = 0,
        length: int | None = None,
        phantom: str = "head",
    ):
        from qsmnet.sim.benchmark_v2 import BENCHMARK_V2_SEED

        if phantom != "head":
            raise ValueError(f"HeadSimulation makes phantom='head', got {phantom!r}")
        if int(seed) == BENCHMARK_V2_SEED:
            raise ValueError(f"seed {seed} is benchmark v2's: training heads must not be benchmark heads")
        if bfr not in BFRS:
            raise ValueError(f"bfr must be one of {BFRS}, got {bfr!r}")
        self.shape = _triple(shape, "shape")
        lo, hi = voxel_size_range
        self.voxel_size_range = (tuple(float(v) for v in lo), tuple(float(v) for v in hi))
        self.factors = _triple(factors, "factors")
        self.max_tilt_deg = float(max_tilt_deg)
        self.snr_range = (float(snr_range[0]), float(snr_range[1]))
        self.bfr = bfr
        self.haemorrhage_prob = float(haemorrhage_prob)
        self.anisotropy = bool(anisotropy)
        self.micro = bool(micro)
        self.oblique_bandlimit = None if oblique_bandlimit is None else float(oblique_bandlimit)
        self.brain_reuse = max(1, int(brain_reuse))
        self.head_params = dict(head_params or {})
        self.margin = int(margin)
        self.seed = int(seed)
        self._cache: tuple | None = None

    def head(self, group: int):
        """The head of group ``group`` and its fine voxel size (the last one is kept for reuse)."""
        if self._cache is not None and self._cache[0] == group:
            return self._cache[1]
        from qsmnet.sim.head import head_phantom

        rng = np.random.default_rng([self.seed, int(group), TAG])
        vs = random_voxel_size(rng, *self.voxel_size_range)
        n = int(rng.integers(1, 3)) if rng.uniform() < self.haemorrhage_prob else 0
        ph = head_phantom(self.shape, vs, rng, haemorrhages=n, **self.head_params)
        self._cache = (group, (ph, vs))
        return ph, vs

    def sample(self, i: int, epoch: int = 0) -> QSMSample:
        """Volume ``i`` (deterministic; ``epoch`` is accepted for the simulated datasets' interface
        and must be 0: cached volumes do not change between epochs)."""
        from qsmnet.sim.acquire import acquire, block_mean, head_fields, oblique_bandlimit
        from qsmnet.sim.benchmark_v2 import _crop_box

        if epoch:
            raise ValueError("HeadSimulation volumes do not depend on the epoch")
        ph, vs = self.head(int(i) // self.brain_reuse)
        rng = np.random.default_rng([self.seed, int(i), TAG + 1])
        b0 = random_b0_dir(rng, self.max_tilt_deg)
        bandlimit = oblique_bandlimit(b0, self.oblique_bandlimit)
        total, _ = head_fields(ph, vs, b0, anisotropy=self.anisotropy, micro=self.micro, bandlimit=bandlimit)
        snr = float(rng.uniform(*self.snr_range))
        acq = acquire(total, ph.m0, ph.r2star, vs, rng, snr=snr, factors=self.factors)
        vsa = tuple(v * f for v, f in zip(vs, self.factors, strict=True))
        brain = (block_mean(ph.mask, self.factors) >= 0.5).float()
        chi = block_mean(ph.brain_chi, self.factors) * brain
        local, mask = self._remove_background(acq.field, brain, vsa, b0)
        mask = (mask > 0).float()
        box = _crop_box(mask, self.margin)
        chi, field, mask = chi[box], (local.float() * mask)[box], mask[box]
        noise = acq.noise_ppm[box][mask > 0]
        geom = Geometry(tuple(chi.shape), vsa, b0)
        return QSMSample(
            field=field[None].contiguous(),
            mask=mask[None].contiguous(),
            geometry=(geom,),
            chi=chi[None].contiguous(),
            meta={"phantom": "head", "noise_std": float(noise.std()), "index": int(i), "snr": snr,
                  "origin": [int(b.start) for b in box],
                  "haemorrhages": int(ph.info.get("haemorrhages", 0))},
        )

    def _remove_background(self, total, brain, voxel_size, b0):
        from qsmnet.phase import pdf, vsharp

        if self.bfr == "vsharp":
            return vsharp(total, brain, voxel_size)
        return pdf(total, brain, Geometry(tuple(brain.shape), voxel_size, b0))
