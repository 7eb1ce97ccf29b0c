"""Sweep the weight of the final data-consistency step (``qsmnet predict --dc MU``) on benchmark v2.

For each case, the network's chi_net, then for each weight mu the solution of

    min_chi ||M (D chi - f)||^2 + mu ||chi - chi_net||^2      (M: mask, D: the case's dipole operator)

(:func:`qsmnet.inference.consistency.data_consistency`: CG, warm start chi_net), and its nRMSE
against the truth; the network runs once per case. Large mu keeps the network's answer; small mu
trusts the field, which fills in what the network under-fits (strong sources) but lets noise and
model error back in off the cone.

    OMP_NUM_THREADS=1 python scripts/benchmark_dc.py unet_head head1_axial_1mm path1_axial_1mm
"""

from __future__ import annotations

import argparse

import torch

from qsmnet.compare import load_cases
from qsmnet.inference.consistency import data_consistency
from qsmnet.inference.methods import get_method
from qsmnet.metrics import nrmse


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="a shipped network (or any method name)")
    ap.add_argument("names", nargs="+", help="benchmark v2 case names")
    ap.add_argument("--benchmark-dir", default="data/benchmark_v2")
    ap.add_argument("--mu", nargs="+", type=float, default=[0.01, 0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    net = get_method(args.method)
    for k in load_cases("benchmark", names=args.names, benchmark_dir=args.benchmark_dir, quiet=True):
        m = k.mask.float()
        chi_net = torch.as_tensor(net(k.field, m, k.geometry))
        row = [f"net {nrmse(chi_net.numpy(), k.chi.numpy(), k.mask.numpy()):.1f}"]
        for mu in args.mu:
            x, _ = data_consistency(chi_net, k.field, m, k.geometry, mu)
            row.append(f"mu {mu:g}: {nrmse(x.numpy(), k.chi.numpy(), k.mask.numpy()):.1f}")
        print(k.name, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
