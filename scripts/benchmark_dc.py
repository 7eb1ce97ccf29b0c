"""Sweep the weight of the final data-consistency step (``qsmnet predict --dc MU``) and score ``--dc auto``.

For each case, the network's chi_net, then for each weight mu the solution of

    min_chi ||M (D chi - f)||^2 + mu ||chi - chi_net||^2      (M: mask, D: the case's dipole operator)

(:func:`qsmnet.inference.consistency.data_consistency`: CG, warm start chi_net), and its nRMSE
against the truth; the network runs once per case. Large mu keeps the network's answer; small mu
trusts the field, which fills in what the network under-fits (strong sources) but lets noise and
model error back in off the cone. ``--auto`` adds the automatic weight's choice, with the
statistics it decides on (tail ratio of the 2 mm-smoothed residual; network residual rms over its
robust level).

Cases: benchmark v2 names, and/or ``--vols A-B`` of a training cache folder (``--cache``: whole
simulated heads; those a network was not trained on are held out for it, e.g. 24-47 for the
shipped ``unet_head``, trained on volumes 0-23):

    OMP_NUM_THREADS=1 python scripts/benchmark_dc.py unet_head head1_axial_1mm path1_axial_1mm --auto
    OMP_NUM_THREADS=1 python scripts/benchmark_dc.py unet_head --cache data/cache/adb18f1ad6a2 \\
        --vols 24-47 --auto
    OMP_NUM_THREADS=1 python scripts/benchmark_dc.py unet_head head1_axial_1mm --mu --scale 1.5

``--scale S`` multiplies field and truth (nRMSE is scale-free, so an equivariant method scores the
same at every S).
"""

from __future__ import annotations

import argparse
import functools
import itertools
from pathlib import Path

import numpy as np
import torch

from qsmnet.compare import load_cases
from qsmnet.inference.consistency import data_consistency
from qsmnet.inference.methods import get_method
from qsmnet.metrics import nrmse
from qsmnet.physics import Geometry


def cache_cases(folder, vols: str):
    """(name, field, mask, geometry, chi) of training-cache volumes ``"A-B"`` (inclusive)."""
    a, b = (int(v) for v in vols.split("-"))
    for i in range(a, b + 1):
        d = torch.load(Path(folder) / f"vol_{i:05d}.pt", map_location="cpu", weights_only=True)
        g = Geometry(tuple(d["field"].shape[-3:]), tuple(d["voxel_size"]), tuple(d["b0_dir"]))
        name = f"vol{i:02d}_{'x'.join(f'{v:g}' for v in g.voxel_size)}"
        yield name, d["field"][0], d["mask"][0].float(), g, d["chi"][0]


def _score(x, truth, mask) -> float:
    return nrmse(np.asarray(x), truth, mask)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="a shipped network (or any method name, or a weights file)")
    ap.add_argument("names", nargs="*", help="benchmark v2 case names")
    ap.add_argument("--benchmark-dir", default="data/benchmark_v2")
    ap.add_argument("--cache", help="a training cache folder (data/cache/<hash>) for --vols")
    ap.add_argument("--vols", help="cache volumes A-B (inclusive)")
    ap.add_argument("--mu", nargs="*", type=float, default=[0.01, 0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--auto", action="store_true", help="also the automatic weight (--dc auto)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply each case's field and truth by this (contrast robustness: real 3 T "
                         "fields have ~1.5x the simulated heads' std)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = get_method(args.method)
    bench = load_cases("benchmark", names=args.names, benchmark_dir=args.benchmark_dir, quiet=True) \
        if args.names else []
    cases = itertools.chain(((k.name, k.field, k.mask.float(), k.geometry, k.chi) for k in bench),
                            cache_cases(args.cache, args.vols) if args.vols else ())
    base, auto = [], []
    for name, field, m, geom, chi in cases:
        field, chi = field * args.scale, chi * args.scale
        score = functools.partial(_score, truth=chi.numpy(), mask=m.numpy() > 0)
        chi_net = torch.as_tensor(net(field, m, geom))
        base.append(score(chi_net))
        row = [f"net {base[-1]:.1f}"]
        for mu in args.mu:
            x, _ = data_consistency(chi_net, field, m, geom, mu)
            row.append(f"mu {mu:g}: {score(x):.1f}")
        if args.auto:
            x, info = data_consistency(chi_net, field, m, geom, "auto")
            a = info["auto"]
            auto.append(score(x))
            row.append(f"auto: {auto[-1]:.1f} (mu {info['mu']}, smoothed tail {a['tail_smoothed']:.2f}, "
                       f"rms/level {a['rms_net'] / a['level_net']:.2f})")
        print(name, " | ".join(row), flush=True)
    if auto:
        worst = max(a - b for a, b in zip(auto, base, strict=True))
        print(f"mean: net {np.mean(base):.2f}, auto {np.mean(auto):.2f}; worst change {worst:+.1f}")


if __name__ == "__main__":
    main()
