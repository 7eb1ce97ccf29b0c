"""Regenerate the README's figures and benchmark table (never typed by hand).

    python scripts/make_readme_figures.py                 # full fixed benchmark set (16 cases), CPU ~20 min
    python scripts/make_readme_figures.py --cases 4       # the first 4 cases only (a quicker preview)

Writes, under ``--out`` (default ``docs/``):

- ``figures/demo.png``: ``qsmnet demo``'s figure (64^3 brain phantom; default network, TKD, Tikhonov, TV);
- ``figures/benchmark_slices.png``: slices and error maps of the first benchmark case;
- ``figures/benchmark_metrics.png``: metric chart over the benchmark cases;
- ``benchmark_table.md``: the mean-over-cases table and nRMSE by geometry, with the command, date,
  device and commit; the same text replaces the README's block between the BENCHMARK markers;
- ``benchmark/metrics.csv``, ``benchmark/summary.csv``, ``benchmark/roi.csv``: the raw numbers.

    python scripts/make_readme_figures.py --v2 data/benchmark_v2   # benchmark v2: realistic + pathology

``--v2 DIR`` instead runs the realistic-tier methods (``V2_METHODS``: the classical solvers with their
automatic λ, the shipped networks and ``V2_VARIANTS``, e.g. ``unet_head+dc``: ``unet_head`` with
``--dc auto``) on the ``--tiers`` of benchmark v2 (``qsmnet simulate --benchmark-v2 -o DIR``) and writes
``benchmark_v2_table.md``, ``benchmark_v2/*.csv``, ``figures/benchmark_v2_slices.png``, and the README
block between the BENCHMARK_V2 markers (CPU, 2 threads: ~1 h). ``--reuse docs/benchmark_v2 --rerun tv``
keeps the other methods' rows of the last run and recomputes only the named methods (and the figure
case).

The benchmark set is generated into the cache on first use (see ``qsmnet.compare.benchmark_cache_dir``).
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from qsmnet.inference.methods import shipped_networks

#: The README's methods: the default method, every shipped network and three solvers.
METHODS = ["default", *shipped_networks(), "tkd", "tikhonov", "tv"]

#: Benchmark v2's variants of a shipped network: label -> comparison spec (method and parameters).
V2_VARIANTS = {"unet_head+dc": {"method": "unet_head", "dc": "auto"}}

#: Benchmark v2's methods: every classical solver at its defaults (automatic λ), every shipped network
#: and the variants whose network is shipped.
V2_METHODS = ["tkd", "tikhonov", "tv", "medi", "ilsqr", "ndi", *shipped_networks(),
              *(k for k, v in V2_VARIANTS.items() if v["method"] in shipped_networks())]


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"), help="default: docs/")
    p.add_argument("--cases", type=int, default=None, help="only the first N benchmark cases (default: all)")
    p.add_argument("--benchmark-dir", default=None, help="benchmark folder (default: the cache)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--demo-size", type=int, default=64, help="demo grid edge (default 64, as qsmnet demo)")
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--skip-benchmark", action="store_true")
    p.add_argument("--v2", metavar="DIR", default=None,
                   help="run benchmark v2 (from qsmnet simulate --benchmark-v2) instead of v1 and the demo")
    p.add_argument("--tiers", nargs="+", default=["realistic", "pathology"],
                   help="v2 tiers (default: realistic pathology)")
    p.add_argument("--methods", nargs="+", default=None, help="v2 methods (default: V2_METHODS)")
    p.add_argument("--names", nargs="+", default=None, help="only these v2 cases (default: all of --tiers)")
    p.add_argument("--reuse", metavar="DIR", default=None,
                   help="v2: keep the (case, method) rows of DIR/metrics.csv and DIR/roi.csv (e.g. "
                        "docs/benchmark_v2) instead of recomputing them, except for --rerun methods")
    p.add_argument("--rerun", nargs="+", default=[], metavar="METHOD",
                   help="v2 with --reuse: methods recomputed on every case (their code changed)")
    p.add_argument("--keep-figure", action="store_true",
                   help="v2: keep figures/benchmark_v2_slices.png (do not rerun every method on its case)")
    args = p.parse_args(argv)
    if args.v2:
        return _benchmark_v2(args)

    import torch

    import qsmnet
    from qsmnet.compare import demo_case, load_cases, run_comparison, summary_markdown
    from qsmnet.compare.figures import safe_name

    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qsmnet-readme-"))
    try:
        if not args.skip_demo:
            case = demo_case(args.demo_size)
            res = run_comparison(METHODS, [case], out_dir=tmp / "demo", device=args.device)
            shutil.copy(tmp / "demo" / f"slices_{safe_name(case.name)}.png", out / "figures" / "demo.png")
            print(summary_markdown(res))
        if not args.skip_benchmark:
            cases = load_cases("benchmark", benchmark_dir=args.benchmark_dir)
            if args.cases:
                cases = cases[: args.cases]
            res = run_comparison(METHODS, cases, out_dir=tmp / "bench", device=args.device)
            shutil.copy(tmp / "bench" / f"slices_{safe_name(cases[0].name)}.png",
                        out / "figures" / "benchmark_slices.png")
            shutil.copy(tmp / "bench" / "metrics.png", out / "figures" / "benchmark_metrics.png")
            (out / "benchmark").mkdir(exist_ok=True)
            for name in ("metrics.csv", "summary.csv", "roi.csv"):
                shutil.copy(tmp / "bench" / name, out / "benchmark" / name)
            device = res.rows[0]["device"]
            hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else (
                f"CPU, {torch.get_num_threads()} threads")
            cmd = "python scripts/make_readme_figures.py" + (
                f" --cases {args.cases}" if args.cases else "") + (
                f" --benchmark-dir {args.benchmark_dir}" if args.benchmark_dir else "")
            text = [
                "<!-- generated by scripts/make_readme_figures.py; do not edit by hand -->",
                f"Fixed simulated benchmark set ({len(cases)} of 16 cases: 2 brain phantoms x axial/30-degree"
                " oblique B0 x 1 mm/1x1x2 mm voxels x low/high noise), mean ± standard deviation over cases.",
                "",
                summary_markdown(res),
                f"Generated with `{cmd}` on {datetime.date.today().isoformat()}, qsmnet {qsmnet.__version__} "
                f"(commit {_commit()}), {hw}. Per-case numbers: `docs/benchmark/metrics.csv`; deep grey "
                "matter ROI means: `docs/benchmark/roi.csv`. nRMSE, detrended nRMSE and HFEN in %; DGM slope:"
                " reconstructed vs true ROI means (ideal 1); time: wall-clock seconds per case; peak mem: "
                "extra memory during the call (see `qsmnet.compare.memory`).",
                "",
            ]
            text += ["nRMSE (%) by geometry, mean over the phantoms and noise levels of each group:", "",
                     *_by_geometry(res.rows), ""]
            text += ["Change of nRMSE against TV in the same run, per geometry (negative: better than TV;",
                     "the networks' bar is -15 %):", "", *_vs_tv(res.rows), ""]
            (out / "benchmark_table.md").write_text("\n".join(text))
            _embed_in_readme("\n".join(text))
            print((out / "benchmark_table.md").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _group(case: str) -> str:
    """``<phantom>_<orientation>_<voxel>[...]`` -> ``"<orientation> <voxel>"``; a v2 row renamed
    ``<tier>_<orientation>_<voxel>`` -> ``"<tier> <orientation> <voxel>"``."""
    parts = case.split("_")
    if parts[0] in ("realistic", "pathology", "hires", "clean"):
        return " ".join(parts[:3])
    return f"{parts[1]} {parts[2]}" if len(parts) >= 3 else case


def _by_geometry(rows) -> list[str]:
    """Markdown table: mean nRMSE per method for each B0 orientation x voxel size group.

    Case names are ``<phantom>_<orientation>_<voxel>_noise-<level>`` (see ``data/README.md``)."""
    groups: dict[str, dict[str, list[float]]] = {}
    methods: list[str] = []
    for r in rows:
        key = _group(r["case"])
        groups.setdefault(key, {}).setdefault(r["method"], []).append(float(r["nrmse"]))
        if r["method"] not in methods:
            methods.append(r["method"])
    lines = ["| geometry | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for key, per in groups.items():
        cells = [f"{sum(v) / len(v):.1f}" if (v := per.get(m)) else "" for m in methods]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _vs_tv(rows) -> list[str]:
    """Markdown table: per geometry, each network's mean nRMSE relative to TV's, in %."""
    groups: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        key = _group(r["case"])
        groups.setdefault(key, {}).setdefault(r["method"], []).append(float(r["nrmse"]))
    nets = [m for m in dict.fromkeys(r["method"] for r in rows)
            if m in shipped_networks() or m in V2_VARIANTS]
    lines = ["| geometry | " + " | ".join(nets) + " |", "|---|" + "---:|" * len(nets)]
    for key, per in groups.items():
        tv = sum(per["tv"]) / len(per["tv"]) if per.get("tv") else None
        cells = [f"{100 * (sum(per[m]) / len(per[m]) / tv - 1):+.1f} %" if tv and per.get(m) else ""
                 for m in nets]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def _benchmark_v2(args) -> int:
    """Benchmark v2's ``args.tiers``: metrics, tables by tier and geometry, one figure, README block."""
    import json

    import torch

    import qsmnet
    from qsmnet.compare import load_cases, run_comparison, summary_markdown
    from qsmnet.compare.core import ComparisonResult, _summarise
    from qsmnet.compare.figures import safe_name
    from qsmnet.compare.tables import write_csv

    root = Path(args.v2)
    tiers = {n: c["tier"] for n, c in json.loads((root / "cases.json").read_text())["cases"].items()}
    names = [n for n, t in tiers.items() if t in args.tiers and (not args.names or n in args.names)]
    if not names:
        print(f"no cases of tiers {args.tiers} in {root}/cases.json", file=sys.stderr)
        return 2
    methods = args.methods or V2_METHODS
    out = Path(args.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    reused_rows, reused_roi = _read_rows(Path(args.reuse)) if args.reuse else ({}, {})
    tmp = Path(tempfile.mkdtemp(prefix="qsmnet-readme-v2-"))
    rows, roi = [], []
    try:
        cases = load_cases("benchmark", names=names, benchmark_dir=root)
        for i, case in enumerate(cases):
            todo = [m for m in methods if m in args.rerun or (case.name, m) not in reused_rows]
            figure = i == 0 and not args.keep_figure
            if figure and todo:
                todo = list(methods)  # the figure case: every panel from this run
            specs = [{"name": m, **V2_VARIANTS[m]} if m in V2_VARIANTS else m for m in todo]
            part = run_comparison(specs, [case], out_dir=tmp / str(i), device=args.device,
                                  figures=figure) if todo else None
            got = {r["method"]: r for r in part.rows} if part else {}
            rows += [got[m] if m in got else reused_rows[(case.name, m)] for m in methods]
            fresh = {} if part is None else {m: [r for r in part.roi if r["method"] == m]
                                             for m in ("truth", *got)}
            for m in ("truth", *methods):
                roi += fresh[m] if m in fresh else reused_roi.get((case.name, m), [])
            if figure and part:
                shutil.copy(tmp / "0" / f"slices_{safe_name(case.name)}.png",
                            out / "figures" / "benchmark_v2_slices.png")
            if kept := [m for m in methods if m not in got]:
                print(f"{case.name}: reused {', '.join(kept)}", file=sys.stderr)
        res = ComparisonResult(rows, _summarise(rows, list(methods)), roi)
        (out / "benchmark_v2").mkdir(exist_ok=True)
        write_csv(rows, out / "benchmark_v2" / "metrics.csv")
        write_csv(res.summary, out / "benchmark_v2" / "summary.csv")
        write_csv(roi, out / "benchmark_v2" / "roi.csv",
                  columns=("case", "method", "label", "roi", "mean_ppm"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device = res.rows[0]["device"]
    hw = torch.cuda.get_device_name(0) if device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} threads")
    rows = [{**r, "case": f"{tiers[r['case']]}_{r['case'].split('_', 1)[1]}"} for r in res.rows]
    vs_tv = _vs_tv(rows) if "tv" in methods and set(methods) & set(shipped_networks()) else []
    cmd = f"python scripts/make_readme_figures.py --v2 {args.v2} --tiers {' '.join(args.tiers)}" + (
        f" --methods {' '.join(args.methods)}" if args.methods else "") + (
        f" --names {' '.join(args.names)}" if args.names else "") + (
        f" --reuse {args.reuse}" if args.reuse else "") + (
        f" --rerun {' '.join(args.rerun)}" if args.rerun else "") + (
        " --keep-figure" if args.keep_figure else "")
    text = [
        "<!-- generated by scripts/make_readme_figures.py --v2; do not edit by hand -->",
        f"Benchmark v2, tiers {', '.join(args.tiers)} ({len(cases)} cases: real-size simulated heads, local"
        " fields from an echo fit and V-SHARP, white-matter anisotropy; see `data/README.md`), mean ±"
        " standard deviation over cases.",
        "",
        summary_markdown(res),
        f"Generated with `{cmd}` on {datetime.date.today().isoformat()}, qsmnet {qsmnet.__version__} "
        f"(commit {_commit()}), {hw}. Per-case numbers: `docs/benchmark_v2/metrics.csv`. Metrics and "
        "columns as in the v1 table below.",
        "",
        "nRMSE (%) by tier and geometry:",
        "",
        *_by_geometry(rows),
        "",
    ]
    if vs_tv:
        text += ["Change of nRMSE against TV in the same run, per tier and geometry",
                 "(negative: better than TV; the networks' bar is -15 %):", "", *vs_tv, ""]
    (out / "benchmark_v2_table.md").write_text("\n".join(text))
    _embed_in_readme("\n".join(text), V2_START, V2_END)
    print((out / "benchmark_v2_table.md").read_text())
    return 0


def _read_rows(folder: Path) -> tuple[dict, dict]:
    """A previous v2 run's ``metrics.csv`` rows by (case, method), numeric columns as floats, and its
    ``roi.csv`` rows grouped by (case, method)."""
    import csv

    from qsmnet.compare.core import NUMERIC

    rows = {}
    with open(folder / "metrics.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            rows[(r["case"], r["method"])] = {k: float(v or "nan") if k in NUMERIC else v
                                              for k, v in r.items()}
    roi: dict = {}
    with open(folder / "roi.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            roi.setdefault((r["case"], r["method"]), []).append(
                {**r, "label": int(r["label"]), "mean_ppm": float(r["mean_ppm"])})
    return rows, roi


README_START, README_END = "<!-- BENCHMARK:START -->", "<!-- BENCHMARK:END -->"
V2_START, V2_END = "<!-- BENCHMARK_V2:START -->", "<!-- BENCHMARK_V2:END -->"


def _embed_in_readme(text: str, start: str = README_START, end: str = README_END) -> None:
    """Replace the block between the ``start``/``end`` markers with ``text`` in the README and in
    every shipped model card (``qsmnet/weights/*.md``) that has the markers."""
    root = Path(__file__).resolve().parents[1]
    for doc in [root / "README.md", *sorted((root / "qsmnet" / "weights").glob("*.md"))]:
        src = doc.read_text()
        if start in src and end in src:
            head, rest = src.split(start, 1)
            _, tail = rest.split(end, 1)
            doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
