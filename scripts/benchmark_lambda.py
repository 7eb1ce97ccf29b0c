"""Benchmark the regularisation choosers: chosen lambda vs the per-case best of a dense sweep.

Per solver and case: the nRMSE of a dense warm-started lambda sweep (its minimum = the per-case
best lambda), then each chooser (``lam="auto"``, ``"lcurve"``, ``"freq"``, ``"noise"``): the chosen
lambda, its ratio to the best, the relative nRMSE penalty, and the time of the choice vs one
fixed-lambda solve.

Cases (combine freely):

- ``--realistic SEED:SIZE:VOXEL:TILT ...``: full-size brain phantoms (``brain_phantom(scale=1)``)
  whose field carries ``qsmnet.sim.forward.simulate``'s imperfections (background residual,
  WM-weighted non-dipolar field, edge errors) plus white noise, rescaled so that the unexplained
  fraction ``||f - D chi|| / ||f||`` (demeaned, in the mask) is ``--model-error`` (default 0.6)
  with 30 % of that error energy white (the in vivo figures in ``docs/regularisation.md``);
  VOXEL ``1`` or ``AxBxC`` in mm (e.g. ``1x1x2``: 160x160x80), TILT the B0 tilt in degrees;
- ``--cases DIR ...``: case folders holding ``chi.nii.gz``, ``field.nii.gz``, ``mask.nii.gz``;
- ``--benchmark DIR``: the set written by ``qsmnet simulate --benchmark``;
- ``--v2 DIR --names NAME ...``: benchmark v2 cases (e.g. ``head1_axial_1mm``) from its folder,
  read with :func:`qsmnet.compare.load_cases`;
- ``--qsm DIR ...``: head folders from ``qsmnet simulate --phantom head`` (multi-echo phase and
  magnitude): the local field is the one ``qsmnet qsm`` derives (mask, echo fit, V-SHARP), scored
  against ``truth_chi`` in its mask intersected with ``brainmask``.

``--grid LO HI N [ITERS]`` replaces the dense grid of every solver run (ITERS: ADMM iterations per
weight for tv / medi, default 40); ``--no-timing`` skips the reference solve at the best weight;
``--param KEY=VALUE`` passes a solver parameter to every call of the solver (e.g. ``pad=0`` for
tikhonov's circular closed form; tv / medi dense sweeps call ADMM directly and ignore it).
``--dense-from JSON ...`` takes each (case, solver)'s dense sweep from earlier ``--json`` rows
instead of running it again (to score a changed rule against the sweep it is measured by).

    OMP_NUM_THREADS=2 python scripts/benchmark_lambda.py --realistic 0:160:1:0 --solvers tv tikhonov
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from qsmnet.metrics import nrmse
from qsmnet.physics import Geometry, forward_field
from qsmnet.solvers import get_solver
from qsmnet.solvers.base import prepare
from qsmnet.solvers.lam import as_lambda

#: dense sweep per solver: (lowest, highest, points); ilsqr / ndi sweep their damping (each
#: point run to the solver's tolerance, warm-started from the previous one).
DENSE = {
    "tv": (2e-5, 1e-2, 12),
    "medi": (2e-5, 1e-2, 12),
    "tikhonov": (1e-3, 3.0, 22),
    "ilsqr": (3e-3, 3.0, 13),
    "ndi": (1.5e-2, 1.0, 7),  # below 1e-2 the descent needs ~1000 iterations per point
}
CHOOSERS = ("auto", "lcurve", "freq", "noise")


def realistic_case(seed: int, size: int, voxel: str, tilt: float, model_error: float = 0.6) -> dict:
    """A full-size brain with realistic model error (see the module docstring)."""
    from qsmnet.sim.brain import brain_phantom
    from qsmnet.sim.forward import simulate

    vs = tuple(float(v) for v in voxel.split("x")) if "x" in voxel else (float(voxel),) * 3
    shape = tuple(max(8, round(size * min(vs) / v)) for v in vs)  # same field of view per axis
    ph = brain_phantom(shape, vs, seed=seed, scale=1.0)
    t = math.radians(tilt)
    geom = Geometry(shape, vs, (math.sin(t) * 0.6, math.sin(t) * 0.8, math.cos(t)))
    imp = dict(background_residual=True, nondipolar=True, edge_errors=True)
    sim = simulate(ph.chi, ph.mask, geom, seed=seed + 100, imperfections=imp, weight=ph.info["wm_weight"])
    mask = sim.mask
    m = mask > 0
    clean = forward_field(ph.chi, vs, geom.b0_dir, pad=True) * mask
    imperf = sim.field - clean
    white = (
        torch.from_numpy(np.random.default_rng(seed + 200).standard_normal(shape, dtype=np.float32)) * mask
    )

    def dm(x):
        return x[m] - x[m].mean()

    # ||e||^2 = q^2/(1-q^2) ||c||^2 for a fraction q (e and c uncorrelated); 30 % of it white
    e_norm = model_error / math.sqrt(1 - model_error**2) * float(dm(clean).norm())
    a = math.sqrt(0.7) * e_norm / float(dm(imperf).norm())
    b = math.sqrt(0.3) * e_norm / float(dm(white).norm())
    field = (clean + a * imperf + b * white) * mask
    frac = float(dm(field - clean).norm() / dm(field).norm())
    name = f"real{seed}_{size}_{voxel}mm_tilt{tilt:g}"
    return dict(
        name=name,
        chi=ph.chi * mask,
        mask=mask,
        field=field,
        geom=geom,
        frac=frac,
        std=float(dm(field).std()),
        noise=b * float(white[m].std()),
    )


def qsm_case(folder: Path) -> dict:
    """The local field ``run_qsm`` derives from a simulated head folder, with the truth chi."""
    from benchmark_phase import folder_case

    from qsmnet.inference.qsm import run_qsm

    c = folder_case(folder)
    r = run_qsm(c["phase"], c["mag"], c["te"], c["b0"], c["geometry"], bfr="vsharp", method="tkd")
    score = (r.mask & torch.from_numpy(np.asarray(c["mask"]))).float()
    chi = torch.from_numpy(np.ascontiguousarray(c["chi"], dtype=np.float32))
    return dict(name=f"qsm_{folder.name}", chi=chi * score, mask=r.mask.float(), field=r.local_field,
                geom=c["geometry"], score_mask=score)


def load_cases(args) -> list[dict]:
    cases = []
    for spec in args.realistic or []:
        seed, size, voxel, tilt = spec.split(":")
        cases.append(realistic_case(int(seed), int(size), voxel, float(tilt), args.model_error))
    for d in args.cases or []:
        from qsmnet.io import load_nifti

        vols = {k: load_nifti(Path(d) / f"{k}.nii.gz", what=k) for k in ("chi", "field", "mask")}
        t = {k: torch.from_numpy(np.ascontiguousarray(v.data, dtype=np.float32)) for k, v in vols.items()}
        cases.append(dict(name=Path(d).name, geom=vols["field"].geometry, **t))
    if args.v2:
        from qsmnet.compare import load_cases as v2_cases

        for k in v2_cases("benchmark", names=args.names, benchmark_dir=args.v2, quiet=True):
            cases.append(dict(name=k.name, chi=k.chi, mask=k.mask.float(), field=k.field, geom=k.geometry))
    for d in args.qsm or []:
        cases.append(qsm_case(Path(d)))
    if args.benchmark:
        from qsmnet.data.benchmark import load_benchmark

        for name, s in load_benchmark(args.benchmark):
            if args.only and not any(o in name for o in args.only):
                continue
            cases.append(dict(name=name, chi=s.chi[0], mask=s.mask[0], field=s.field[0], geom=s.geometry[0]))
    return cases


def cache_case(folder: Path, index: int) -> dict:
    """Volume ``index`` of a training cache (``qsmnet.data.PrecomputedDataset``'s ``vol_NNNNN.pt``) as a
    case dict: ``name`` (``<hash>/<index>``), ``field``, ``mask``, ``chi`` (X, Y, Z) and ``geom``."""
    v = torch.load(Path(folder) / f"vol_{index:05d}.pt")
    geom = Geometry(tuple(v["field"].shape[-3:]), tuple(v["voxel_size"]), tuple(v["b0_dir"]))
    return dict(name=f"{Path(folder).name}/{index}", field=v["field"][0], mask=v["mask"][0], chi=v["chi"][0],
                geom=geom)


def err(chi, c) -> float:
    return float(nrmse(chi.numpy(), c["chi"].numpy(), c.get("score_mask", c["mask"]).numpy()))


def dense_sweep(solver: str, c: dict, grid=None, params=None, cold: bool = False) -> list[tuple]:
    """(lambda, nRMSE) over the dense grid (``grid`` = (lo, hi, n[, iters]) or :data:`DENSE`),
    warm-started where possible; ``cold``: every weight a full solve of the solver as a user calls
    it (its own start and stopping rule), where a warm-started path can be trapped (NDI on a
    haematoma)."""
    lo, hi, n = (grid or DENSE[solver])[:3]
    n = int(n)
    per = int(grid[3]) if grid and len(grid) > 3 else 40
    if cold or solver == "tikhonov":
        f = get_solver(solver)
        return [
            (float(lam), err(f(c["field"], c["mask"], c["geom"], lam=float(lam), **(params or {})), c))
            for lam in np.logspace(math.log10(lo), math.log10(hi), n)
        ]
    if solver in ("tv", "medi"):
        from qsmnet.solvers.medi import edge_weights
        from qsmnet.solvers.tv import admm_tv

        p = prepare(c["field"], c["mask"], c["geom"])
        tw = edge_weights(p.mask, p.mask, p.inv_voxel(), 0.3) if solver == "medi" else None
        out, state = [], {}
        for lam in np.logspace(math.log10(hi), math.log10(lo), n):
            chi, _ = admm_tv(
                p, as_lambda(lam, p), iterations=per, tol=0.0, state=state, data_weight=p.mask, tv_weight=tw
            )
            out.append((float(lam), err((chi * p.mask)[0, 0], c)))
        return out
    from qsmnet.solvers.ilsqr import cg_solve
    from qsmnet.solvers.ndi import DEFAULT_PHASE_SCALE, descend

    p = prepare(c["field"], c["mask"], c["geom"])
    out, x = [], None
    for lam in np.logspace(math.log10(hi), math.log10(lo), n):
        if solver == "ilsqr":
            x, _, _ = cg_solve(p, float(lam), 1e-3, 500, x)
        else:
            x, _, _ = descend(p, p.mask, DEFAULT_PHASE_SCALE, 2.0, float(lam), 1e-4, 1000, x)
        out.append((float(lam), err((x * p.mask)[0, 0], c)))
    return out


def run_solver(
    solver: str, c: dict, choosers, grid=None, timing: bool = True, params=None, cold: bool = False,
    dense=None,
) -> list[dict]:
    """``dense``: the (lambda, nRMSE) sweep to score against, if already measured."""
    from qsmnet.solvers.select import cone_power

    rho = cone_power(prepare(c["field"], c["mask"], c["geom"]))
    params = dict(params or {})
    dense = [tuple(r) for r in dense] if dense else dense_sweep(solver, c, grid, params, cold)
    for lam_d, e_d in dense:
        print(f"{c['name']:32s} {solver:8s} dense lam {lam_d:<10.3g} nRMSE {e_d:6.2f}", flush=True)
    best_lam, best_err = min(dense, key=lambda r: r[1])
    f = get_solver(solver)
    t_one = float("nan")
    if timing:
        t0 = time.perf_counter()
        f(c["field"], c["mask"], c["geom"], lam=best_lam, **params)
        t_one = time.perf_counter() - t0
    rows = []
    for ch in choosers:
        info = {}
        t0 = time.perf_counter()
        x = f(c["field"], c["mask"], c["geom"], lam=ch, info=info, **params)
        dt = time.perf_counter() - t0
        e = err(x, c)
        lam = info.get("lambda")
        raw = None
        if "lambda_sweep" in info:
            from qsmnet.solvers.select import Sweep, frequency_analysis

            raw = frequency_analysis(Sweep.from_summary(info["lambda_sweep"]), 1.0)
        rows.append(
            dict(
                case=c["name"],
                solver=solver,
                chooser=ch,
                method=info.get("lambda_method"),
                lam=lam,
                best_lam=best_lam,
                ratio=lam / best_lam if lam else None,
                nrmse=e,
                best_nrmse=best_err,
                freq_raw=raw,
                cone_power=rho,
                penalty=e / best_err - 1,
                seconds=dt,
                iterations=info.get("iterations"),
                one_solve_s=t_one,
                misfit_match=info.get("misfit_match"),  # NDI auto: target and [damping, misfit] tried
                dense=dense,
            )
        )
        print(
            f"{c['name']:32s} {solver:8s} {ch:7s} lam {lam:<10.3g} best {best_lam:<10.3g} "
            f"ratio {rows[-1]['ratio']:5.2f}  nRMSE {e:6.2f} (best {best_err:6.2f}, "
            f"{100 * (e / best_err - 1):+5.1f} %)"
            f"  {dt:6.1f} s (one solve {t_one:5.1f} s) freq_raw {raw} rho {rho:.3f}",
            flush=True,
        )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realistic", nargs="*", metavar="SEED:SIZE:VOXEL:TILT")
    ap.add_argument("--model-error", type=float, default=0.6)
    ap.add_argument("--cases", nargs="*", metavar="DIR")
    ap.add_argument("--benchmark", metavar="DIR")
    ap.add_argument("--only", nargs="*", help="benchmark cases whose name contains one of these")
    ap.add_argument("--v2", metavar="DIR", help="benchmark v2 folder (with --names)")
    ap.add_argument("--names", nargs="*", help="benchmark v2 case names (default: all)")
    ap.add_argument("--qsm", nargs="*", metavar="DIR", help="simulated head folders run through run_qsm")
    ap.add_argument("--grid", nargs="+", type=float, metavar="LO HI N [ITERS]", help="dense grid override")
    ap.add_argument("--cold", action="store_true",
                    help="dense sweep of full solves (each weight from the solver's own start)")
    ap.add_argument("--no-timing", action="store_true", help="skip the reference solve at the best weight")
    ap.add_argument("--param", nargs="*", metavar="KEY=VALUE", help="solver parameters for every call")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--solvers", nargs="+", default=["tv", "tikhonov", "medi", "ilsqr", "ndi"])
    ap.add_argument("--choosers", nargs="+", default=list(CHOOSERS))
    ap.add_argument("--json", metavar="PATH", help="write all rows here")
    ap.add_argument("--dense-from", nargs="*", metavar="JSON", default=[],
                    help="reuse the dense sweeps of these earlier --json files")
    args = ap.parse_args(argv)
    swept = {(r["case"], r["solver"]): r["dense"] for f in args.dense_from
             for r in json.loads(Path(f).read_text())}
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    from lambda_realdata import key_values

    params = key_values(args.param or [])
    for c in load_cases(args):
        if "frac" in c:
            print(
                f"{c['name']}: unexplained fraction {c['frac']:.3f}, field std {c['std']:.4f} ppm, "
                f"white noise {c['noise']:.4f} ppm",
                flush=True,
            )
        for s in args.solvers:
            rows += run_solver(s, c, args.choosers, args.grid, not args.no_timing, params, args.cold,
                               swept.get((c["name"], s)))
            if args.json:  # after every solver: a stopped run keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
