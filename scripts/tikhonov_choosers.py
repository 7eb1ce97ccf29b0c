"""Parameter-free choosers for Tikhonov's gradient weight, against each case's dense-sweep best.

Session 25 measured two that are not in the package (docs/regularisation.md, "Two
parameter-free choosers for Tikhonov"); session 27 made a third, the Wiener balance in a shell
set by the finest axis' Nyquist (``tikhonov.wiener_weight``), Tikhonov's ``lam="auto"`` under model
error (docs/regularisation.md, "Tikhonov's weight from the Wiener balance"). All work on the padded
grid the solver uses, in k-space, with no solve:

* **GCV** (generalised cross-validation): the weight minimising
  ``||(I - H) f||^2 / trace(I - H)^2``, with ``H = D^2 / (D^2 + lam |k|^2)`` the closed form's
  influence filter (circular, by Parseval).
* **Wiener balance**: in a shell of |k| (a fraction of the coarsest axis' Nyquist), the error power
  ``S_e`` is the field's mean power on the cone (|D| < 0.05), the susceptibility power ``S_chi`` is
  ``mean((|F f|^2 - S_e) / D^2)`` far from it (|D| > 0.3), and the weight is
  ``S_e / (S_chi mean|k|^2)``: the gradient weight at which the closed form is the Wiener filter
  in that shell. ``wiener`` in the output: the package's own, in the shell
  ``tikhonov.WIENER_SHELL`` of the finest axis' Nyquist; ``wiener_coarse``: session 25's shells of
  the coarsest axis' Nyquist.

For cases with a truth the best weight comes from a dense sweep of closed-form solves (37
weights 1e-3..3, nRMSE in the mask), and the package's rule (``lam="auto"``) is printed beside::

    OMP_NUM_THREADS=2 python scripts/tikhonov_choosers.py --v2 data/benchmark_v2
    OMP_NUM_THREADS=2 python scripts/tikhonov_choosers.py --realistic 0:160:1:0 1:160:1x1x2:30
    OMP_NUM_THREADS=2 python scripts/tikhonov_choosers.py --real /work/shared/realdata/hemorrhage_3t

(``--realistic``: the 160^3 brains of ``benchmark_lambda.py``; ``--real``: folders with
``phase_rad.nii.gz``, ``phase_rad.json`` and ``mask.nii.gz``, no truth, so no sweep;
``--cache DIR``: volumes of a training cache, ``qsmnet.data.PrecomputedDataset``'s
``vol_NNNNN.pt``, every ``--every``-th from ``--first``, ``--count`` of them: whole heads after a
real background removal whose seeds no lambda rule has seen.) The best weight is refined on a
grid four times finer around the sweep's best; each chooser's nRMSE is that of its own weight::

    OMP_NUM_THREADS=2 python scripts/tikhonov_choosers.py --cache data/cache/HASH --every 10 --first 5 \
        --count 29
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from qsmnet.metrics import nrmse  # noqa: E402
from qsmnet.solvers import select  # noqa: E402
from qsmnet.solvers import tikhonov as tik  # noqa: E402
from qsmnet.solvers.base import prepare, safe_reciprocal  # noqa: E402

#: benchmark v2 tiers scored by default (their cases are read from the set's cases.json)
V2_TIERS = ("realistic", "pathology", "hires")
#: shells for the Wiener balance, as fractions of the coarsest axis' Nyquist
SHELLS = ((0.1, 0.2), (0.2, 0.35), (0.35, 0.5), (0.5, 0.75))
GRID = (1e-3, 3.0, 37)


def load(args) -> list[dict]:
    import benchmark_lambda as bl

    names = args.names
    if args.v2 and not names:
        tiers = json.loads((Path(args.v2) / "cases.json").read_text())["cases"]
        names = [n for n, c in tiers.items() if c["tier"] in V2_TIERS]
    ns = argparse.Namespace(realistic=args.realistic, cases=None, qsm=None, benchmark=None, model_error=0.6,
                            only=None, v2=args.v2, names=names)
    cases = bl.load_cases(ns)
    for folder in args.real or []:
        import lambda_realdata as lr

        f, m, g = lr.load(Path(folder))
        cases.append(dict(name=Path(folder).name, field=torch.as_tensor(f).float(),
                          mask=torch.as_tensor(m).float(), geom=g, chi=None))
    if args.cache:
        cases += [bl.cache_case(Path(args.cache), i)
                  for i in range(args.first, args.first + args.every * args.count, args.every)]
    return cases


def kspace(q):
    """Kernel, |k|^2 symbol, the field's half spectrum and the rfft multiplicities (batch of one)."""
    d = q.op.kernel[0, 0]
    w = torch.full(d.shape, 2.0)
    w[..., 0] = 1
    if q.field.shape[-1] % 2 == 0:
        w[..., -1] = 1
    return d, q.laplacian()[0, 0], torch.fft.rfftn(q.field[0, 0]), w


def gcv(d, r2, power, w, grid) -> float:
    scores = []
    for lam in grid:
        h = d * d * safe_reciprocal(d * d + lam * r2)
        scores.append(float(((1 - h) ** 2 * power * w).sum()) / float(((1 - h) * w).sum()) ** 2)
    return grid[min(range(len(grid)), key=scores.__getitem__)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--v2", metavar="DIR", help="benchmark v2 folder")
    ap.add_argument("--names", nargs="+", help=f"v2 cases (default: the tiers {', '.join(V2_TIERS)})")
    ap.add_argument("--realistic", nargs="+", metavar="SEED:SIZE:VOXEL:TILT")
    ap.add_argument("--real", nargs="+", metavar="DIR")
    ap.add_argument("--cache", metavar="DIR", help="a training cache folder (vol_NNNNN.pt with chi)")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--count", type=int, default=29)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    grid = select.log_grid(*GRID)
    rows = []
    for c in load(args):
        p = prepare(c["field"], c["mask"], c["geom"])
        q = tik.pad_problem(p, tik.padding(p.mask, tik.PAD))
        d, r2, f_hat, w = kspace(q)
        power = f_hat.abs().square()
        kmax = select.spatial_frequency(q)[1]  # the coarsest axis' Nyquist (session 25's shells)
        row = dict(case=c["name"], voxel=list(c["geom"].voxel_size), rho=select.cone_power(q),
                   model=tik.model_weight(q, "gradient"), wiener=tik.wiener_weight(q),
                   gcv=gcv(d, r2, power, w, grid),
                   wiener_coarse={f"{a}-{b}": tik.wiener_weight(q, band=(a * kmax, b * kmax))
                                  for a, b in SHELLS})
        info = {}
        tik.tikhonov(c["field"], c["mask"], c["geom"], info=info)
        row.update(auto=info["lambda"], auto_method=info["lambda_method"])
        if c.get("chi") is not None:
            x, y, z = p.field.shape[-3:]

            def err(lam, c=c, p=p, q=q, d=d, r2=r2, f_hat=f_hat, x=x, y=y, z=z):
                # the closed form from the one spectrum above: one inverse FFT per weight
                chi = torch.fft.irfftn(f_hat * (d * safe_reciprocal(d * d + lam * r2)), s=tuple(q.op.shape))
                return float(nrmse((chi[:x, :y, :z] * p.mask[0, 0]).numpy(), c["chi"].numpy(),
                                   c["mask"].numpy()))

            errs = [err(lam) for lam in grid]
            i = min(range(len(grid)), key=errs.__getitem__)
            step = (grid[1] / grid[0]) ** 0.25 if len(grid) > 1 else 1.0
            fine = [grid[i] * step ** j for j in range(-4, 5)]
            fine_errs = [err(lam) for lam in fine]
            j = min(range(len(fine)), key=fine_errs.__getitem__)
            row.update(best=fine[j], best_nrmse=fine_errs[j], sweep=list(zip(grid, errs, strict=True)))
            row["scores"] = {
                n: dict(ratio=row[n] / row["best"], penalty=100 * (err(row[n]) / fine_errs[j] - 1))
                for n in ("auto", "model", "wiener")
                if row[n] is not None
            }
        rows.append(row)
        if "best" in row:
            scores = "  ".join(f"{n} {v['ratio']:.2f}x {v['penalty']:+.1f}%"
                               for n, v in row["scores"].items())
            best = f"best {row['best']:.4f} ({row['best_nrmse']:.2f})"
            print(f"{row['case']:32s} rho {row['rho']:.3f}  {best}  {scores}  [auto = {row['auto_method']}]",
                  flush=True)
        else:
            print(f"{row['case']:32s} rho {row['rho']:.3f}  auto {row['auto']:.4f} ({row['auto_method']})  "
                  f"model {row['model']:.4f}  wiener {row['wiener']:.4f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
