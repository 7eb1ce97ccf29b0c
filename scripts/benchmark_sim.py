"""Time training-pair generation (issue bar: one 64^3 pair < 50 ms on this CPU).

Usage: python scripts/benchmark_sim.py [--repeats 20] [--threads N]
Prints median and best times (ms) for: a 64^3 shapes phantom; its field (pad=True, 2x grid);
the pair; a brain volume (96^3 and 112^3, template cached); one brain-based sample when a brain
is reused for 8 samples; and SimulatedQSMDataset throughput.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from qsmnet.data import SimulatedQSMDataset
from qsmnet.physics import Geometry
from qsmnet.sim import shapes_phantom, simulate
from qsmnet.sim.brain import _template, brain_phantom


def timeit(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (DataLoader workers use 1)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    n, rng = 64, np.random.default_rng(0)
    g = Geometry((n, n, n), (1.0, 1.0, 1.0), (0.3, 0.2, 0.93))
    ph = shapes_phantom(g.shape, g.voxel_size, rng)

    def row(name, fn, repeats=a.repeats):
        med, best = timeit(fn, repeats)
        print(f"{name:<48s} median {med:8.1f} ms   best {best:8.1f} ms")
        return med

    row("shapes phantom 64^3", lambda: shapes_phantom(g.shape, g.voxel_size, rng))
    for pad in (True, 32):
        row(f"field 64^3 (pad={pad})", lambda pad=pad: simulate(ph.chi, ph.mask, g, rng, noise_std=(0, 0.005),
                                                             pad=pad))
    for pad in (True, 32):
        def pair(pad=pad):
            p = shapes_phantom(g.shape, g.voxel_size, rng)
            simulate(p.chi, p.mask, g, rng, noise_std=(0, 0.005), pad=pad)
        row(f"PAIR 64^3 shapes phantom + field (pad={pad})", pair)
    t = time.perf_counter()
    _template()
    print(f"{'MNI template load (once per process)':<48s} {1000 * (time.perf_counter() - t):8.1f} ms")
    for shape in ((96, 96, 96), (112, 112, 112)):
        row(f"brain phantom {shape}", lambda shape=shape: brain_phantom(shape, (1, 1, 1), rng),
            max(3, a.repeats // 5))
    bp = brain_phantom((96, 96, 96), (1, 1, 1), rng)
    gb = Geometry((96, 96, 96), (1, 1, 1), (0.3, 0.2, 0.93))
    med_b = row("brain field 96^3 (pad=True)", lambda: simulate(bp.chi, bp.mask, gb, rng),
                max(3, a.repeats // 5))
    med_v = timeit(lambda: brain_phantom((96, 96, 96), (1, 1, 1), rng), 3)[0]
    print(f"{'brain sample 96^3, brain reused for 8 samples':<48s} ~{med_b + med_v / 8:8.1f} ms (amortised)")
    for cfg in (dict(phantom="shapes", shape=64, patch_size=None),
                dict(phantom="shapes", shape=80, patch_size=64),
                dict(phantom="brain", shape=96, patch_size=64, brain_reuse=8)):
        ds = SimulatedQSMDataset(**cfg, length=16, seed=1)
        t = time.perf_counter()
        k = sum(1 for _ in ds)
        print(f"{'dataset ' + str(cfg):<48s} {1000 * (time.perf_counter() - t) / k:8.1f} ms/sample")


if __name__ == "__main__":
    main()
