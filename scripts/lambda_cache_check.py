"""A solver's automatic weight against a grid around it, on cached training heads (held out from its rule).

The training caches (``data/cache/<hash>/vol_*.pt``, built by ``qsmnet-train`` from
``conf/data/sim_head.yaml``) hold whole heads of benchmark v2's profile at other seeds: tilted B0,
1-1.2 mm or ~1x1x2 mm voxels, V-SHARP or PDF local fields, some with haematomas. For each volume and
solver this solves at ``auto`` x each ``--grid`` multiple (each a full solve, as a user runs it) and,
with ``--former``, at the rule the solver had before session 28 (TV / MEDI: the model-error factor
read in the coarsest axis' band; iLSQR: unchanged). It prints, per solver and volume, the grid's best
weight and the ratio and nRMSE penalty of ``auto`` (and of the former rule) to it.

NDI's ``auto`` is not one weight since session 29: it starts at iLSQR's damping rule and lowers it
where NDI's misfit exceeds iLSQR's (:func:`qsmnet.solvers.ndi.match_misfit`). For NDI the grid is
around the rule (its ``former``, the pre-session-29 ``auto``), and ``auto`` is one more solve with
``lam="auto"``, scored as it comes out (its weight and the ``[damping, misfit]`` pairs it tried are
in the JSON). ``--rows-from JSON ...`` reuses the grid rows of earlier ``--json`` output (same
volume and solver) instead of solving them again.

    OMP_NUM_THREADS=2 python scripts/lambda_cache_check.py --cache data/cache/7fd60c693055 \\
        --volumes 28 7 --solvers tv medi --grid 0.5 0.71 1 1.41 2 --former --json out.json

The best is a grid point (or NDI's ``auto``), so a ratio at the grid's edge is a bound, not a
measurement.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from benchmark_lambda import cache_case

from qsmnet.metrics import nrmse
from qsmnet.solvers import SOLVERS, select
from qsmnet.solvers.base import prepare


def weights(solver: str, p) -> tuple[float, float]:
    """(auto, former) weight of ``solver`` on problem ``p``."""
    if solver in ("tv", "medi"):
        from qsmnet.solvers.lam import balanced_lambda
        from qsmnet.solvers.tikhonov import pilot

        noise = float(balanced_lambda(p, pilot(p), "l1")[0])
        s = select.robust_field_std(p)
        former = select.bounded_model_weight(p, noise, select.L1_FLOOR * s, select.L1_CEIL * s)  # coarse band
        return select.model_l1_lambda(p, noise), former
    from qsmnet.solvers.ilsqr import auto_damping

    d = auto_damping(p, "model")  # iLSQR's rule; NDI's auto starts there (session 29: and may go lower)
    return d, d


def _at(score: dict, lam: float) -> float:
    """The nRMSE solved at ``lam`` (a stored row's weight may differ in the last digits)."""
    key = min(score, key=lambda k: abs(k / lam - 1))
    if abs(key / lam - 1) > 1e-6:
        raise KeyError(f"no solve at {lam:.6g}")
    return score[key]


def _solve(solver, field, mask, chi, geom, lam) -> tuple[float, dict]:
    """One full solve: (nRMSE %, info), printed."""
    t, info = time.perf_counter(), {}
    x = torch.as_tensor(SOLVERS[solver](field, mask, geom, lam=lam, info=info))
    e = float(nrmse(x.numpy(), chi.numpy(), mask.numpy()))
    match = f", match {info['misfit_match']}" if lam == "auto" and "misfit_match" in info else ""
    print(f"   {solver} {lam if isinstance(lam, str) else f'{lam:.3e}'} (λ {info['lambda']:.3e}): {e:.2f} % "
          f"({info.get('iterations')} it, {time.perf_counter() - t:.0f} s{match})", flush=True)
    return e, info


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, type=Path, help="a cache folder, data/cache/<hash>")
    ap.add_argument("--volumes", nargs="+", type=int, required=True, help="volume indices")
    ap.add_argument("--solvers", nargs="+", default=["tv", "medi"], choices=["tv", "medi", "ilsqr", "ndi"])
    ap.add_argument("--grid", nargs="+", type=float, default=[0.5, 0.71, 1.0, 1.41, 2.0],
                    help="multiples of the auto weight to solve at (default 0.5 0.71 1 1.41 2)")
    ap.add_argument("--former", action="store_true", help="also solve at the pre-session-28 rule")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rows-from", nargs="*", type=Path, default=[], metavar="JSON",
                    help="reuse the grid rows of earlier --json output for the same volume and solver")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    earlier = [r for f in args.rows_from for r in json.loads(f.read_text())]
    stored = {(r["volume"], r["solver"]): r["rows"] for r in earlier}
    out = []
    for i in args.volumes:
        c = cache_case(args.cache, i)
        field, mask, chi, geom, name = c["field"], c["mask"], c["chi"], c["geom"], c["name"]
        p = prepare(field, mask, geom)
        vox = "x".join(f"{v:.2f}" for v in geom.voxel_size)
        rho, rho_fine = select.cone_powers(p)
        print(f"{name} voxel {vox} rho {rho:.3f} (finest band {rho_fine:.3f})", flush=True)
        for solver in args.solvers:
            auto, former = weights(solver, p)
            lams = sorted({auto * c for c in args.grid} | ({former} if args.former else set()))
            rows = [list(r) for r in stored.get((name, solver), [])]
            for lam in lams if not rows else []:
                e, info = _solve(solver, field, mask, chi, geom, lam)
                rows.append([lam, e])
            score = dict((r[0], r[1]) for r in rows)
            extra = {}
            if solver == "ndi":  # auto is a solve of its own: the rule's damping, lowered by the misfit match
                e, info = _solve(solver, field, mask, chi, geom, "auto")
                auto, score[info["lambda"]] = info["lambda"], e
                extra = dict(auto_nrmse=e, misfit_match=info["misfit_match"])
            best = list(min(score.items(), key=lambda r: r[1]))
            row = dict(volume=name, solver=solver, voxel=list(geom.voxel_size), auto=auto, former=former,
                       rows=rows, best=best, **extra,
                       auto_ratio=auto / best[0], auto_penalty=100 * (_at(score, auto) / best[1] - 1))
            text = f"auto {row['auto_ratio']:.2f}x {row['auto_penalty']:+.1f} %"
            if args.former:
                row.update(former_ratio=former / best[0],
                           former_penalty=100 * (_at(score, former) / best[1] - 1))
                text += f" | former {row['former_ratio']:.2f}x {row['former_penalty']:+.1f} %"
            print(f"  {name} {solver}: best {best[0]:.3e} ({best[1]:.2f}) | {text}", flush=True)
            out.append(row)
            if args.json:
                args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
