"""Benchmark ``qsmnet predict``: whole-process speed and memory, and accuracy on the fixed phantoms.

Bars of issue 6 (figures printed, nothing asserted):

1. speed/memory: the default network on a 160^3 volume runs, whole process (Python start-up, model
   load, I/O included), within 15x the time of ``--method tikhonov``, with peak RSS under 4 GB;
2. ``--phantom``: on the fixed brain-phantom benchmark the default network beats TV (nRMSE) at
   axial, oblique and anisotropic geometry, the oblique case reaching ``qsmnet predict`` only
   through the NIfTI affine (``b0_dir_source`` is checked to be ``affine``).

``--memory`` measures the bytes per voxel of a forward pass (the constants of
:mod:`qsmnet.inference.windows`). Until network weights ship, ``--checkpoint`` (or, by default, an
untrained network of the shipped U-Net configuration) stands in for the default network.

    python scripts/benchmark_inference.py                    # speed + memory, 160^3
    python scripts/benchmark_inference.py --phantom          # accuracy vs TV on the benchmark
    python scripts/benchmark_inference.py --memory           # bytes/voxel per network class
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Model config of the shipped U-Net (conf/model/unet.yaml + conf/experiment/unet_brain.yaml).
UNET_CFG = {
    "_target_": "qsmnet.models.QSMUNet",
    "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2],
    "num_res_units": 1,
    "norm": None,
    "act": "PRELU",
    "tik_lambda": 0.02,
    "scale": 10.0,
    "pad": 0,
}
LPCNN_CFG = {"_target_": "qsmnet.models.LPCNN", "iterations": 4, "features": 16, "depth": 4}
#: Benchmark cases of ``--phantom``: axial, oblique (affine only) and anisotropic.
PHANTOM_CASES = ("axial_1mm", "oblique30_1mm", "axial_1x1x2")
# Runs a command and prints its wall time and the peak RSS of its process tree (children only).
_WRAP = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:]).returncode; dt = time.perf_counter() - t; "
    "print(rc, dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in GB) of ``cmd`` run in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True)
    rc, dt, rss = out.stdout.split()[-3:]
    if rc != "0":
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}\n{out.stderr}")
    return float(dt), int(rss) / 1024**2


def stand_in_network(folder: Path, cfg: dict) -> Path:
    """Untrained weights of ``cfg`` (seeded) when no network is shipped."""
    import torch

    from qsmnet.models.io import build_network, save_weights

    torch.manual_seed(0)
    return save_weights(build_network(cfg), cfg, folder / "untrained")


def network_args(args, folder: Path) -> tuple[list[str], str]:
    from qsmnet.inference.methods import shipped_networks

    if args.checkpoint:
        return ["--checkpoint", args.checkpoint], f"checkpoint {args.checkpoint}"
    if args.method:
        return ["--method", args.method], f"network '{args.method}'"
    if shipped_networks():
        from qsmnet.inference.methods import PREFERRED_NETWORKS

        # the first shipped network in order of preference (the default method may be a solver)
        name = next((n for n in PREFERRED_NETWORKS if n in shipped_networks()), shipped_networks()[0])
        return ["--method", name], f"network '{name}'"
    path = stand_in_network(folder, UNET_CFG)
    return ["--checkpoint", str(path)], "UNTRAINED stand-in of the shipped U-Net config (no weights shipped)"


def write_volume(folder: Path, n: int) -> tuple[Path, Path]:
    """A simulated n^3 brain (1 mm, axial, low noise) as field/mask NIfTIs."""
    import numpy as np
    import torch

    from qsmnet.io import save_nifti
    from qsmnet.physics import Geometry
    from qsmnet.sim import simulate
    from qsmnet.sim.brain import brain_phantom

    ph = brain_phantom((n, n, n), seed=0)
    sim = simulate(ph.chi, ph.mask, Geometry((n, n, n)), seed=0, noise_std=5e-4)
    f, m = folder / "field.nii.gz", folder / "mask.nii.gz"
    save_nifti(f, torch.as_tensor(sim.field).numpy(), np.eye(4), force=True)
    save_nifti(m, torch.as_tensor(sim.mask).numpy(), np.eye(4), force=True)
    return f, m


def speed(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        field, mask = write_volume(tmp, args.size)
        print(f"# simulated a {args.size}^3 brain in {time.perf_counter() - t0:.1f} s")
        net, what = network_args(args, tmp)
        # this tree's code (python -m), not whichever `qsmnet` console script is on the PATH
        base = [sys.executable, "-m", "qsmnet.cli.main", "predict", str(field), "--mask", str(mask),
                "--device", args.device, "--force"]  # fmt: skip
        net = net + [a for f in (args.flips or []) for a in ("--flips", str(f))][:2]
        runs = {"tikhonov": base + ["--method", "tikhonov"], "network": base + net}
        for f in (args.flips or [])[1:]:
            runs[f"flips{f}"] = [*base, *net[:-2], "--flips", str(f)]
        if args.window:
            runs["windows"] = base + net + ["--window", str(args.window)]
        res: dict[str, list] = {k: [] for k in runs}
        for _ in range(args.repeats):  # interleaved, so a load change hits both alike
            for k, cmd in runs.items():
                res[k].append(measure(cmd + ["-o", str(tmp / f"{k}.nii.gz")]))
        side = json.loads((tmp / "network.json").read_text())
        print(f"# network: {what}; inference {side['inference']['mode']}, "
              f"estimate {side['inference']['memory_estimate_bytes'] / 1e9:.2f} GB")  # fmt: skip
        print(f"{'method':10s} {'wall_s (median of ' + str(args.repeats) + ')':>24s} {'peak_rss_GB':>12s}")
        med = {}
        for k, v in res.items():
            med[k] = statistics.median(t for t, _ in v)
            print(f"{k:10s} {med[k]:24.2f} {max(r for _, r in v):12.2f}")
        ratio = med["network"] / med["tikhonov"]
        peak = max(r for _, r in res["network"])
        print(f"ratio network/tikhonov = {ratio:.2f} (bar: <= 15) -> {'PASS' if ratio <= 15 else 'FAIL'}")
        print(f"network peak RSS = {peak:.2f} GB (bar: < 4) -> {'PASS' if peak < 4 else 'FAIL'}")
        if args.window:
            import numpy as np

            from qsmnet.io import load_nifti

            m = load_nifti(mask).data > 0
            a, b = (load_nifti(tmp / f"{k}.nii.gz").data[m] for k in ("network", "windows"))
            print(f"windows {args.window}^3 vs whole volume: ||diff|| / ||whole|| = "
                  f"{np.linalg.norm(a - b) / np.linalg.norm(a):.4f} inside the mask")  # fmt: skip


def phantom(args) -> None:
    from qsmnet.compare.cases import ensure_benchmark
    from qsmnet.io import load_nifti
    from qsmnet.metrics import nrmse

    root = ensure_benchmark()
    cases = json.loads((root / "cases.json").read_text())["cases"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        net, what = network_args(args, tmp)
        print(f"# network: {what}; nRMSE (%) of demeaned maps inside the mask, lower is better")
        print(f"{'case':36s} {'tilt':>6s} {'source':>8s} {'network':>8s} {'tv':>8s}  winner")
        for brain in args.brains:
            for key in PHANTOM_CASES:
                name = f"brain{brain}_{key}_noise-{args.noise}"
                files = {k: root / v for k, v in cases[name]["files"].items()}
                chi = load_nifti(files["chi"]).data
                mask = load_nifti(files["mask"]).data > 0
                scores, side = {}, {}
                for label, extra in (("network", net), ("tv", ["--method", "tv"])):
                    out = tmp / f"{name}_{label}.nii.gz"
                    cmd = ["qsmnet", "predict", str(files["field"]), "--mask", str(files["mask"]),
                           "-o", str(out), "--device", args.device, "--force", *extra]  # fmt: skip
                    subprocess.run(cmd, check=True, capture_output=True)
                    scores[label] = nrmse(load_nifti(out).data, chi, mask)
                    side = json.loads(out.with_name(f"{name}_{label}.json").read_text())
                win = "network" if scores["network"] < scores["tv"] else "tv"
                print(f"{name:36s} {side['b0_tilt_deg']:6.1f} {side['b0_dir_source']:>8s} "
                      f"{scores['network']:8.1f} {scores['tv']:8.1f}  {win}")  # fmt: skip


_MEM = """
import resource, sys, torch
from qsmnet.models.io import build_network
from qsmnet.physics import Geometry
cfg, n = __import__("json").loads(sys.argv[1]), int(sys.argv[2])
net = build_network(cfg).eval()
f = torch.randn(1, 1, n, n, n) * 0.02
m = torch.ones_like(f)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.no_grad():
    net(f, m, Geometry((n, n, n)))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024 / n**3)
"""


def memory(args) -> None:
    print(f"{'network':10s} {'n':>5s} {'bytes/voxel':>12s}")
    for label, cfg in (("QSMUNet", UNET_CFG), ("LPCNN", LPCNN_CFG)):
        for n in args.memory_sizes:
            out = subprocess.run([sys.executable, "-c", _MEM, json.dumps(cfg), str(n)], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            print(f"{label:10s} {n:5d} {float(out.stdout.split()[-1]):12.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=160, help="volume edge for the speed bar (default 160)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--window", type=int, help="also run the network on sliding windows of this edge")
    p.add_argument("--checkpoint", help="network weights standing in for the default network")
    p.add_argument("--method", help="shipped network to time (default: the first shipped, by preference)")
    p.add_argument("--flips", type=int, nargs="+", help="flip counts to time (the first is 'network')")
    p.add_argument("--phantom", action="store_true", help="accuracy vs TV on the fixed benchmark instead")
    p.add_argument("--brains", type=int, nargs="+", default=[1, 2])
    p.add_argument("--noise", default="low", choices=("low", "high"))
    p.add_argument("--memory", action="store_true", help="bytes/voxel of a forward pass instead")
    p.add_argument("--memory-sizes", type=int, nargs="+", default=[48, 96, 160])
    args = p.parse_args()
    if args.memory:
        memory(args)
    elif args.phantom:
        phantom(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
