"""Tune the solvers' default lambda / threshold / tolerance on simulated brain-like phantoms.

Cases: several phantom seeds x noise levels x B0 tilts (``qsmnet.sim.brain.brain_phantom`` when
available, else smooth random-blob phantoms made here). For each method and each candidate value
the script prints the mean demeaned nRMSE (%) over the cases, the best value, and how far
``lam="auto"`` lands from it. The defaults in the solvers' signatures come from this table.

    python scripts/tune_solvers.py --size 56 --voxel 3.0 --seeds 2
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from qsmnet.metrics import nrmse
from qsmnet.physics import Geometry, forward_field
from qsmnet.solvers import SOLVERS

GRIDS = {
    "tkd": ("threshold", [0.1, 0.15, 0.19, 0.25]),
    "tsvd": ("threshold", [0.05, 0.1, 0.15, 0.2]),
    "tikhonov": ("lam", [3e-3, 1e-2, 3e-2, 1e-1, 3e-1]),
    "ilsqr": ("tol", [0.02, 0.05, 0.1, 0.2]),
    "tv": ("lam", [1e-5, 2e-5, 5e-5, 1e-4, 2e-4]),
    "medi": ("lam", [1e-5, 2e-5, 5e-5, 1e-4, 2e-4]),
    "ndi": ("iterations", [25, 50, 100, 200]),
}
AUTO = ("tikhonov", "tv", "medi")
#: grid points of early-stopped solvers run without a chooser (their lam="auto" picks the stop itself)
FIXED = {"ilsqr": {"lam": 0.0}, "ndi": {"lam": 1e-6, "tol": 0.0}}


def blob_phantom(n: int, voxel: float, seed: int):
    """Smooth fallback phantom: random Gaussian blobs inside an ellipsoid (chi in ppm)."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(np.float64)
    mask = ((x / np.array([0.42, 0.36, 0.38])[:, None, None, None] / n) ** 2).sum(0) < 1
    chi = np.zeros((n,) * 3)
    for _ in range(12):
        c = rng.uniform(-0.2 * n, 0.2 * n, 3)
        w = rng.uniform(1.0, 4.0)
        chi += rng.uniform(-0.1, 0.15) * np.exp(-((x - c[:, None, None, None]) ** 2).sum(0) / (2 * w * w))
    return torch.tensor(chi * mask, dtype=torch.float32), torch.tensor(mask, dtype=torch.float32)


def make_cases(size: int, voxel: float, seeds: int, noises, tilts):
    try:
        from qsmnet.sim.brain import brain_phantom
    except ImportError:  # brain phantoms not available: smooth blobs
        brain_phantom = None
    cases = []
    for seed in range(seeds):
        if brain_phantom is not None:
            ph = brain_phantom((size,) * 3, (voxel,) * 3, seed=seed)
            chi, mask = ph.chi.float(), ph.mask.float()
        else:
            chi, mask = blob_phantom(size, voxel, seed)
        for tilt in tilts:
            t = math.radians(tilt)
            b0 = (math.sin(t) * 0.6, math.sin(t) * 0.8, math.cos(t))
            geom = Geometry((size,) * 3, (voxel,) * 3, b0)
            clean = forward_field(chi, geom.voxel_size, geom.b0_dir, pad=True)
            for noise in noises:
                g = torch.Generator().manual_seed(1000 * seed + int(tilt))
                field = (clean + noise * torch.randn(clean.shape, generator=g)) * mask
                cases.append(dict(chi=chi, mask=mask, field=field, geom=geom, noise=noise, tilt=tilt))
    kind = "brain" if brain_phantom is not None else "blob"
    return cases, kind


def score(method, cases, **params) -> tuple[float, float]:
    errs, secs = [], 0.0
    for c in cases:
        t0 = time.perf_counter()
        x = SOLVERS[method](c["field"], c["mask"], c["geom"], **params)
        secs += time.perf_counter() - t0
        errs.append(nrmse(x.numpy(), c["chi"].numpy(), c["mask"].numpy()))
    return float(np.mean(errs)), secs / len(cases)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=56)
    ap.add_argument("--voxel", type=float, default=3.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.001, 0.003], help="noise std (ppm)")
    ap.add_argument("--tilts", type=float, nargs="+", default=[0.0, 25.0], help="B0 tilts (deg)")
    ap.add_argument("--methods", nargs="+", default=list(GRIDS))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cases, kind = make_cases(args.size, args.voxel, args.seeds, args.noise, args.tilts)
    print(
        f"{len(cases)} {kind} cases: {args.size}^3 at {args.voxel} mm, seeds {args.seeds}, "
        f"noise {args.noise} ppm, tilts {args.tilts} deg"
    )
    for method in args.methods:
        name, values = GRIDS[method]
        rows = [(v, *score(method, cases, **{name: v}, **FIXED.get(method, {}))) for v in values]
        for v, e, s in rows:
            print(f"  {method:9s} {name}={v:<8g} nRMSE {e:6.1f} %  ({s:.2f} s/case)")
        best = min(rows, key=lambda r: r[1])
        line = f"  -> {method} best {name}={best[0]:g}: {best[1]:.1f} %"
        if method in AUTO:
            for noise in args.noise:
                sub = [c for c in cases if c["noise"] == noise]
                e, _ = score(method, sub, lam="auto")
                eb, _ = score(method, sub, **{name: best[0]})
                line += f"; noise {noise:g}: auto {e:.1f} % vs best-fixed {eb:.1f} %"
        print(line, flush=True)


if __name__ == "__main__":
    main()
