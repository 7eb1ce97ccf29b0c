"""What the out-of-domain guard does to a network on simulated cases with a truth.

For each case: the network's nRMSE, the guard's statistics and verdict
(:func:`qsmnet.inference.guard.assess`, the network's own limits), the nRMSE of what ``--fallback tv``
returns (TV's answer when flagged, the network's otherwise) and TKD's nRMSE for comparison. The
network runs under :class:`qsmnet.inference.guard.GuardedMethod` with its shipped limits, as in
``qsmnet predict --fallback tv``; the fallback is run here only for flagged cases, as there.

    OMP_NUM_THREADS=2 python scripts/guard_report.py unet_head --v2 data/benchmark_v2 --threads 2

It takes every case of benchmark v2 (or ``--names``): the realistic and pathology heads, the 0.6 mm
crop and the ``clean_`` tier (the small white-noise brains of the v1 table), and sums up per tier
(``clean`` and the rest). ``--json`` writes the rows.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from qsmnet.compare import load_cases
from qsmnet.inference.guard import GuardedMethod
from qsmnet.inference.methods import FALLBACK_METHOD, get_method
from qsmnet.metrics import nrmse
from qsmnet.solvers import SOLVERS

STATS = ("residual_ratio", "std_ratio", "std_field", "cone_ratio", "correlation")


def report_case(method: GuardedMethod, name: str, case) -> dict:
    """One row: nRMSEs of network, guarded answer and TKD, and the guard's statistics."""
    m = case.mask.float()
    truth, inside = case.chi.numpy(), m.numpy() > 0
    score = lambda x: nrmse(np.asarray(x), truth, inside)  # noqa: E731
    info: dict = {}
    chi = method(case.field, m, case.geometry, info=info)  # fallback None: the network's answer
    g = info["guard"]
    row = {"case": name, "in_domain": g["in_domain"], "reasons": g["reasons"],
           **{k: g["stats"][k] for k in STATS}, "network": score(chi)}  # fmt: skip
    fallback = SOLVERS[FALLBACK_METHOD]  # what the default returns when the guard flags
    row["guarded"] = row["network"] if g["in_domain"] else score(fallback(case.field, m, case.geometry))
    row["tkd"] = score(SOLVERS["tkd"](case.field, m, case.geometry))
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", help="a shipped network name or a weights file")
    ap.add_argument("--v2", metavar="DIR", default="data/benchmark_v2", help="benchmark v2 folder")
    ap.add_argument("--names", nargs="*", help="only these benchmark v2 cases")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    method = GuardedMethod(get_method(args.method), fallback=None)
    cases = load_cases("benchmark", names=args.names, benchmark_dir=args.v2, quiet=True)
    rows = []
    head = f"{'case':<38} {'net':>6} {'guarded':>7} {'tkd':>6}  " + " ".join(f"{k[:9]:>9}" for k in STATS)
    print(head, flush=True)
    for case in cases:
        tier = "clean" if case.name.startswith("clean_") else "heads"
        row = {"set": tier, **report_case(method, case.name, case)}
        rows.append(row)
        flag = "" if row["in_domain"] else "  flagged: " + "; ".join(row["reasons"])
        print(f"{case.name:<38} {row['network']:6.1f} {row['guarded']:7.1f} {row['tkd']:6.1f}  "
              + " ".join(f"{row[k]:9.3f}" for k in STATS) + flag, flush=True)
    for tier in dict.fromkeys(r["set"] for r in rows):
        sel = [r for r in rows if r["set"] == tier]
        mean = {k: np.mean([r[k] for r in sel]) for k in ("network", "guarded", "tkd")}
        print(f"{tier}: {sum(not r['in_domain'] for r in sel)} of {len(sel)} flagged; mean nRMSE network "
              f"{mean['network']:.1f}, guarded {mean['guarded']:.1f}, TKD {mean['tkd']:.1f}; guarded worse "
              f"than TKD on {sum(r['guarded'] > r['tkd'] for r in sel)}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
