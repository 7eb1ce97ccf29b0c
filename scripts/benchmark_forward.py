"""Time qsmnet's forward field against qsm-forward's ``generate_field`` on one volume.

Both run in this process on the same float64 phantom with the same padding (2N per axis); the
qsmnet timing is warm (kernel cached); each is the median of ``--repeats`` interleaved runs.
Prints both times, the speed-up (the bar is >= 5x) and the max relative difference of the
demeaned fields (qsm-forward uses D(0) = 1/3, qsmnet D(0) = 0, a constant offset).

    python scripts/benchmark_forward.py [--size 128] [--repeats 3] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def phantom(n: int, seed: int = 0) -> np.ndarray:
    """Random spheres of -0.2..0.3 ppm inside an n^3 grid, zero at the border (float64)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2] * 3, indexing="ij", sparse=True)
    chi = np.zeros((n, n, n))
    for _ in range(20):
        c = rng.uniform(-0.3, 0.3, 3) * n
        r = rng.uniform(0.03, 0.12) * n
        chi[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r] += rng.uniform(-0.2, 0.3)
    return chi


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from qsm_forward.qsm_forward import generate_field

    from qsmnet.physics import forward_field

    n = args.size
    b0 = np.array([0.1, -0.2, 0.95])
    b0 /= np.linalg.norm(b0)  # qsm-forward does not normalise
    vs = (1.0, 1.0, 1.0)
    chi = phantom(n)
    x = torch.from_numpy(chi).to(args.device)

    forward_field(x, vs, b0, dtype=torch.float64)  # warm-up: kernel cache, FFT plans
    t_ours, t_ref = [], []
    for _ in range(args.repeats):  # interleaved, so load from other processes hits both alike
        _sync(args.device)
        t0 = time.perf_counter()
        ours = forward_field(x, vs, b0, dtype=torch.float64)
        _sync(args.device)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = generate_field(chi, voxel_size=list(vs), B0_dir=list(b0))
        t_ref.append(time.perf_counter() - t0)
    ours = ours.cpu().numpy()

    def dm(a):
        return a - a.mean()

    diff = np.abs(dm(ours) - dm(ref)).max() / np.abs(dm(ref)).max()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"volume {n}^3 float64, device {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {load:.1f}")
    if load > (os.cpu_count() or 1):
        print("warning: the machine is busier than its CPU count; timings are inflated and noisy")
    a, b = statistics.median(t_ours), statistics.median(t_ref)
    print(f"qsmnet forward_field (warm), median of {args.repeats}: {a:.3f} s  (runs: "
          + ", ".join(f"{t:.2f}" for t in t_ours) + ")")
    print(f"qsm-forward generate_field,  median of {args.repeats}: {b:.3f} s  (runs: "
          + ", ".join(f"{t:.2f}" for t in t_ref) + ")")
    print(f"speed-up: {b / a:.1f}x (bar: >= 5x)")
    print(f"max relative difference of demeaned fields: {diff:.2e}")


if __name__ == "__main__":
    main()
