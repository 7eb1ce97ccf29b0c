"""Forward+backward time per training batch of each network, to size CPU training runs.

Usage:
    python scripts/benchmark_models.py                         # the shipped experiment sizes, 48^3, batch 2
    python scripts/benchmark_models.py --patch 64 --batch 1 --models lpcnn unet
    python scripts/benchmark_models.py --experiment            # sizes and patches of conf/experiment/*_brain

Prints, per model: parameters, median seconds per optimiser step (forward, loss, backward, step)
and the implied iterations per second, on the device in use (CUDA when present).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from qsmnet.models import LPCNN, MoDL, QSMUNet, VarNet
from qsmnet.physics import Geometry, forward_field

CONF = Path(__file__).resolve().parents[1] / "qsmnet" / "conf"

DEFAULTS = {
    "unet": lambda: QSMUNet(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1),
    "lpcnn": lambda: LPCNN(iterations=4, features=16, depth=4),
    "varnet": lambda: VarNet(iterations=4, features=16, depth=4),
    "modl": lambda: MoDL(iterations=4, cg_iters=5, features=24, depth=5),
}


def from_experiment(name: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}_brain", "name=bench", "paths.output_dir=/tmp"])
    patch = cfg.data.train.get("patch_size") or max(cfg.data.train.shape)
    return (lambda: instantiate(cfg.model, _convert_="all")), int(patch), int(cfg.data.batch_size)


def bench(make, patch: int, batch: int, steps: int, device: torch.device) -> tuple[int, float]:
    torch.manual_seed(0)
    net = make().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    shape = (patch,) * 3
    geoms = tuple(Geometry(shape, (1.0, 1.0, 1.5), (0.1 * b, 0.2, 1.0)) for b in range(batch))
    chi = 0.05 * torch.randn(batch, 1, *shape)
    field = torch.cat([forward_field(chi[b : b + 1], g.voxel_size, g.b0_dir) for b, g in enumerate(geoms)])
    chi, field = chi.to(device), field.to(device)
    mask = torch.ones_like(field)
    times = []
    for _ in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = (net(field, mask, geoms) - chi).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sum(p.numel() for p in net.parameters()), statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULTS))
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--experiment", action="store_true", help="sizes from conf/experiment/<model>_brain.yaml")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}")
    for name in args.models:
        if args.experiment:
            make, patch, batch = from_experiment(name)
        else:
            make, patch, batch = DEFAULTS[name], args.patch, args.batch
        n, s = bench(make, patch, batch, args.steps, device)
        print(f"{name:8s} patch {patch}^3 x {batch}  params {n:9,d}   {s:7.3f} s/step   {1 / s:6.2f} it/s")


if __name__ == "__main__":
    main()
