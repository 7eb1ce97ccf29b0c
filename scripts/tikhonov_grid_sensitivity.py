"""How much Tikhonov's answer depends on the padded grid: nRMSE under small changes of the padding.

For each benchmark v2 case, the closed form (gradient regulariser, ``lam``) is solved on the default
padded grid (:func:`qsmnet.solvers.tikhonov.padding`) and on grids with ``--extra`` more voxels of
zero padding along the last axis (B0 for the axial heads), once per low-frequency ``--floors``
value. A solver whose result is a property of the data should not move with a few voxels of zeros;
the spread (max - min nRMSE over the grids) is what the floor is for (docs/regularisation.md).

    OMP_NUM_THREADS=1 python scripts/tikhonov_grid_sensitivity.py data/benchmark_v2 --floors 0 0.1
"""

from __future__ import annotations

import argparse
import json

import torch

from qsmnet.compare import load_cases
from qsmnet.metrics import nrmse
from qsmnet.solvers import SOLVERS
from qsmnet.solvers import tikhonov as tik
from qsmnet.solvers.base import prepare

#: benchmark v2's realistic and pathology tiers.
HEADS = ("head1_axial_1mm", "head1_oblique45_1mm", "head1_axial_1x1x2", "head2_axial_1mm",
         "head2_oblique45_1mm", "head2_axial_1x1x2", "path1_axial_1mm", "path1_oblique30_1mm")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("v2", help="benchmark v2 folder")
    ap.add_argument("--names", nargs="+", default=list(HEADS), help="benchmark v2 case names")
    ap.add_argument("--floors", nargs="+", type=float, default=[0.0, tik.FLOOR])
    ap.add_argument("--lam", default="auto", help="lambda, or 'auto' (chosen once, on the default grid)")
    ap.add_argument("--extra", nargs="+", type=int, default=[0, 2, 4, 6, 8, 10])
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cases = load_cases("benchmark", names=args.names, benchmark_dir=args.v2, quiet=True)
    rows = []
    for c in cases:
        field, mask = c.field, c.mask.float()
        p = prepare(field, mask, c.geometry)
        base = tik.padding(p.mask, tik.PAD)
        for floor in args.floors:
            info: dict = {}
            SOLVERS["tikhonov"](field, mask, c.geometry, lam=args.lam, floor=floor, info=info)
            lam = float(info["lambda"])
            errs = []
            for dz in args.extra:
                # the solver's own zero padding, dz voxels longer along the last axis; pad=0 solves as given
                q = tik.pad_problem(p, (base[0], base[1], base[2] + dz))
                chi = SOLVERS["tikhonov"](q.field, q.mask, q.geometries, lam=lam, floor=floor, pad=0)
                chi = chi[0, 0, : field.shape[0], : field.shape[1], : field.shape[2]]
                errs.append(float(nrmse(chi.numpy(), c.chi.numpy(), mask.numpy())))
            rows.append({"case": c.name, "floor": floor, "lam": lam, "extra": args.extra, "nrmse": errs,
                         "spread": max(errs) - min(errs)})
            errs_s = " ".join(f"{e:6.2f}" for e in errs)
            spread = rows[-1]["spread"]
            print(f"{c.name:24s} floor {floor:<5g} lam {lam:.4f}  nRMSE {errs_s}   spread {spread:5.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
