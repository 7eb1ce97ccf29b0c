"""Speed and accuracy bars of the classical solvers (prints figures; asserts nothing).

Speed (on CUDA when present, else CPU): tkd on an N^3 field, and tv (ADMM, a fixed number of
iterations, tol=0) against its FFT floor = iterations x (rfftn + irfftn) of the volumes it
transforms (two for the default mask-weighted data term, one with weight=None), timed alone in
the same run; each figure is the best of --repeats runs. Accuracy: nRMSE (%) of tv and medi vs
closed-form Tikhonov on noisy brain-like phantoms (same fields, each method at its default
parameters and at lam="auto").

    python scripts/benchmark_solvers.py                      # 160^3, 250 iterations
    python scripts/benchmark_solvers.py --size 96 --skip-accuracy
"""

from __future__ import annotations

import argparse
import time

import torch

from qsmnet.physics import Geometry
from qsmnet.solvers import SOLVERS


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_of(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return min(times)


def speed(size: int, iterations: int, device: torch.device, repeats: int) -> None:
    n = size
    g = torch.Generator().manual_seed(0)
    field = (0.01 * torch.randn(n, n, n, generator=g)).to(device)
    x = torch.stack(torch.meshgrid(*[torch.arange(n) - n // 2] * 3, indexing="ij")).float()
    mask = ((x / (0.45 * n)) ** 2).sum(0).lt(1).float().to(device)
    geom = Geometry((n, n, n), (1.0, 1.0, 1.0), (0.1, 0.2, 1.0))
    print(f"device {device}, threads {torch.get_num_threads()}, grid {n}^3")
    SOLVERS["tkd"](field, mask, geom)  # warm-up (kernel cache, FFT plans)
    t = best_of(lambda: SOLVERS["tkd"](field, mask, geom), device, repeats)
    print(f"tkd: {t:.3f} s (bar: < 0.5 s)")

    def floor(volumes: int):
        """The FFTs tv must do: per iteration ``volumes`` rfftn and ``volumes`` irfftn of the grid
        (1 for weight=None; 2 for the mask-weighted data term)."""
        vols = [torch.randn(1, 1, n, n, n, generator=g).to(device) for _ in range(volumes)]

        def run():
            ys = vols
            for _ in range(iterations):
                ys = [torch.fft.irfftn(torch.fft.rfftn(y, dim=(-3, -2, -1)), s=(n, n, n), dim=(-3, -2, -1))
                      for y in ys]
            return ys

        return best_of(run, device, repeats)

    SOLVERS["tv"](field, mask, geom, iterations=3, tol=0.0)
    for weight, channels in (("mask", 2), (None, 1)):
        t_fft = floor(channels)
        info: dict = {}
        t_tv = best_of(lambda w=weight, i=info: SOLVERS["tv"](field, mask, geom, iterations=iterations,
                                                              tol=0.0, weight=w, info=i), device, repeats)
        print(f"FFT floor ({iterations} x {channels} x (rfftn + irfftn)): {t_fft:.2f} s")
        tag = "  [default]" if weight == "mask" else ""
        print(f"tv weight={weight!r} ({info['iterations']} iterations): {t_tv:.2f} s = "
              f"{t_tv / t_fft:.2f} x its FFT floor (bar: <= 2x){tag}")


def accuracy(size: int, voxel: float, seeds: int, noises, device: torch.device) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from tune_solvers import make_cases

    from qsmnet.metrics import nrmse

    cases, kind = make_cases(size, voxel, seeds, noises, [0.0, 25.0])
    print(
        f"accuracy on {len(cases)} {kind} cases ({size}^3 at {voxel} mm, noise {noises} ppm, tilt 0/25 deg)"
    )
    rows = [
        ("tikhonov", {}),
        ("tv", {}),
        ("medi", {}),
        ("tikhonov", {"lam": "auto"}),
        ("tv", {"lam": "auto"}),
    ]
    rows.append(("medi", {"lam": "auto"}))
    res = {}
    for name, kw in rows:
        errs = []
        for c in cases:
            f, m = c["field"].to(device), c["mask"].to(device)
            x = SOLVERS[name](f, m, c["geom"], **kw).cpu()
            errs.append(nrmse(x.numpy(), c["chi"].numpy(), c["mask"].numpy()))
        res[name, str(kw)] = sum(errs) / len(errs)
        print(
            f"  {name:9s} {str(kw):18s} mean nRMSE {res[name, str(kw)]:6.1f} %"
            f"  per case {[round(e, 1) for e in errs]}"
        )
    for tag in ("{}", str({"lam": "auto"})):
        base = res["tikhonov", tag]
        for name in ("tv", "medi"):
            gain = 100 * (1 - res[name, tag] / base)
            print(f"  {name} vs tikhonov ({tag}): {gain:.1f} % lower nRMSE (bar: >= 10 %)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--iterations", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--acc-size", type=int, default=48)
    ap.add_argument("--acc-voxel", type=float, default=3.5)
    ap.add_argument("--acc-seeds", type=int, default=2)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.001, 0.003])
    args = ap.parse_args(argv)
    name = args.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if not args.skip_speed:
        speed(args.size, args.iterations, device, args.repeats)
    if not args.skip_accuracy:
        accuracy(args.acc_size, args.acc_voxel, args.acc_seeds, args.noise, device)


if __name__ == "__main__":
    main()
