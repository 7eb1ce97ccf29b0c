"""Methods x cases -> metrics, timings, memory; the library behind ``qsmnet compare`` and ``qsmnet demo``."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry

from .memory import timed
from .methods import bind_method, normalise_methods

#: Deep grey matter ROIs (QSM challenge 2.0 / qsm-ci label ids) used for the ROI means and slope.
DGM_LABELS = {1: "caudate", 2: "globus_pallidus", 3: "putamen", 4: "red_nucleus", 5: "dentate",
              6: "substantia_nigra", 7: "thalamus"}
#: Scalar metrics of :func:`qsmnet.metrics.all_metrics` kept in each row.
METRICS = ("nrmse", "nrmse_detrend", "hfen", "xsim", "ssim", "correlation", "psnr")
#: Numeric columns of a row, in CSV order (after ``case``, ``method``).
NUMERIC = (*METRICS, "dgm_slope", "seconds", "peak_mem_mib", "iterations", "residual")


@dataclass
class Case:
    """One volume to reconstruct.

    Attributes:
        name: case label used in tables and file names.
        field: (X, Y, Z) float32 local field (ppm).
        mask: (X, Y, Z) bool brain mask.
        geometry: voxel size (mm) and B0 direction (voxel axes).
        chi: (X, Y, Z) float32 true susceptibility (ppm), or None (no metrics then).
        labels: (X, Y, Z) int64 label map (qsm-ci ids), or None (no DGM statistics then).
    """

    name: str
    field: torch.Tensor
    mask: torch.Tensor
    geometry: Geometry
    chi: torch.Tensor | None = None
    labels: torch.Tensor | None = None


def as_case(item, index: int = 0) -> Case:
    """A :class:`Case` from a ``Case``, a ``QSMSample`` ((1, X, Y, Z) tensors, one geometry,
    optional ``meta["name"]``/``meta["labels"]``) or a ``(name, QSMSample)`` pair."""
    if isinstance(item, Case):
        return item
    name = None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        name, item = item
    if not hasattr(item, "field") or not hasattr(item, "geometry"):
        raise TypeError(f"a case is a Case, a QSMSample or a (name, QSMSample) pair, got {type(item)}")
    meta = getattr(item, "meta", None) or {}
    name = name or meta.get("name") or f"case{index}"
    geom = item.geometry[0] if isinstance(item.geometry, Sequence) else item.geometry

    def vol(x):
        if x is None:
            return None
        x = torch.as_tensor(x)
        while x.ndim > 3 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 3:
            raise ValueError(f"case {name}: expected one (X, Y, Z) volume, got shape {tuple(x.shape)}")
        return x

    labels = vol(meta.get("labels"))
    chi = vol(getattr(item, "chi", None))
    return Case(str(name), vol(item.field).float(), vol(item.mask) > 0, geom,
                None if chi is None else chi.float(), None if labels is None else labels.long())


def roi_means(vol, labels, mask) -> dict[int, float]:
    """Mean of ``vol`` (ppm) in each DGM label present inside the mask: {label id: mean}."""
    from qsmnet.metrics import roi_stats

    return {k: float(m) for k, (n, m, _s) in roi_stats(vol, labels, mask).items() if k in DGM_LABELS and n}


def roi_slope(recon_means: Mapping[int, float], truth_means: Mapping[int, float]) -> float:
    """Least-squares slope of reconstructed vs true ROI means (1 = no under/over-estimation);
    NaN with fewer than two ROIs or constant truth."""
    ids = sorted(set(recon_means) & set(truth_means))
    if len(ids) < 2:
        return math.nan
    x = np.array([truth_means[i] for i in ids])
    y = np.array([recon_means[i] for i in ids])
    if np.ptp(x) < 1e-12:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class ComparisonResult:
    """What :func:`run_comparison` returns.

    Attributes:
        rows: one dict per (case, method): ``case``, ``method`` (label), ``registered`` (the
            registry name), ``params`` (JSON), ``device``, the :data:`NUMERIC` columns
            (metrics in qsm-ci units: nRMSE/HFEN in %, NaN when the case has no truth;
            ``seconds`` wall time; ``peak_mem_mib`` see :mod:`qsmnet.compare.memory`) and
            ``mem_source``.
        summary: one dict per method: the mean of every numeric column over the cases
            (``<col>``) and its standard deviation (``<col>_std``), ``n_cases``, ``device``.
        roi: one dict per (case, method or ``truth``, DGM label): ``case``, ``method``,
            ``label``, ``roi``, ``mean_ppm``.
        maps: for the figure cases, {case: {"truth", "field", "mask", "labels", "voxel_size",
            "recon": {method: (X, Y, Z) float32 ndarray}}}.
        files: written files by kind (``csv``, ``summary_csv``, ``roi_csv``, ``markdown``,
            ``figures``), when ``out_dir`` was given.
    """

    rows: list[dict]
    summary: list[dict]
    roi: list[dict] = field(default_factory=list)
    maps: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return [s["method"] for s in self.summary]


def check_out_dir(out_dir, force: bool = False) -> Path:
    """Create ``out_dir``; refuse an existing non-empty folder unless ``force``.

    Raises:
        QSMNetError: it is a file, or a non-empty folder and ``force`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QSMNetError(f"output {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise QSMNetError(f"output folder {out} is not empty (use force=true / --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise QSMNetError(f"output folder {out} is not writable")
    return out


def _summarise(rows: list[dict], labels: list[str]) -> list[dict]:
    out = []
    for label in labels:
        mine = [r for r in rows if r["method"] == label]
        s = {"method": label, "registered": mine[0]["registered"], "device": mine[0]["device"],
             "n_cases": len(mine)}
        for col in NUMERIC:
            v = np.array([r[col] for r in mine], dtype=np.float64)
            v = v[np.isfinite(v)]
            s[col] = float(v.mean()) if v.size else math.nan
            s[f"{col}_std"] = float(v.std()) if v.size else math.nan
        out.append(s)
    return out


def run_comparison(
    methods,
    cases: Sequence,
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    *,
    params: Mapping | None = None,
    figures: bool = True,
    figure_cases: Sequence[str] | str | None = None,
    progress: bool = True,
    force: bool = False,
) -> ComparisonResult:
    """Reconstruct every case with every method and score the results.

    Args:
        methods: see :func:`qsmnet.compare.methods.normalise_methods`, e.g.
            ``{"tkd": {"method": "tkd"}, "tv": {"method": "tv", "lam": 5e-5}}`` or
            ``["default", "tkd", "tikhonov", "tv"]``.
        cases: :class:`Case` objects, ``QSMSample`` objects or ``(name, QSMSample)`` pairs (as
            :func:`qsmnet.data.load_benchmark` returns); truth (``chi``) and ``meta["labels"]``
            are optional.
        out_dir: when given, write ``metrics.csv``, ``summary.csv``, ``roi.csv``, ``results.md``
            and PNG figures there (created; refused if non-empty unless ``force``).
        device: ``auto``, ``cpu``, ``cuda`` or a ``torch.device``; methods run there.
        params: extra parameters per method label, merged over ``methods``.
        figures: write the figures (needs ``out_dir``).
        figure_cases: case names whose maps are kept and drawn; ``"all"``; default the first case.
        progress: a tqdm bar over method x case on stderr.
        force: allow a non-empty ``out_dir``.

    Returns:
        :class:`ComparisonResult`.

    Raises:
        QSMNetError: unknown method or parameter, no cases, duplicate case names, bad ``out_dir``.
    """
    from tqdm import tqdm

    from qsmnet.inference import resolve_device
    from qsmnet.metrics import all_metrics

    specs = normalise_methods(methods, params)
    bound = {label: bind_method(label, spec) for label, spec in specs.items()}
    cases = [as_case(c, i) for i, c in enumerate(cases)]
    if not cases:
        raise QSMNetError("no cases to compare")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise QSMNetError(f"case names must be unique, got {names}")
    if figure_cases is None:
        keep = {names[0]}
    elif figure_cases == "all":
        keep = set(names)
    else:
        keep = {figure_cases} if isinstance(figure_cases, str) else set(figure_cases)
        if keep - set(names):
            raise QSMNetError(f"figure case(s) {sorted(keep - set(names))} not among the cases")
    out = check_out_dir(out_dir, force) if out_dir is not None else None
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))

    rows, roi, maps = [], [], {}
    bar = tqdm(total=len(cases) * len(bound), desc="compare", unit="run", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    try:
        for case in cases:
            f, m = case.field.to(dev), case.mask.to(dev)
            truth_means = None
            if case.chi is not None and case.labels is not None:
                truth_means = roi_means(case.chi, case.labels, case.mask)
                roi += [{"case": case.name, "method": "truth", "label": k, "roi": DGM_LABELS[k],
                         "mean_ppm": v} for k, v in truth_means.items()]
            if case.name in keep:
                maps[case.name] = {"truth": None if case.chi is None else case.chi.numpy(),
                                   "field": case.field.numpy(), "mask": case.mask.numpy(),
                                   "labels": None if case.labels is None else case.labels.numpy(),
                                   "voxel_size": case.geometry.voxel_size, "recon": {}}
            for label, (fn, kw) in bound.items():
                bar.set_postfix_str(f"{label} on {case.name}")
                call = functools.partial(fn, f, m, case.geometry, **kw)
                with torch.no_grad():
                    res, seconds, pm = timed(call, dev)
                info = res.info
                chi = res.chi.cpu()
                reg = specs[label]["method"]
                reg = reg if isinstance(reg, str) else getattr(reg, "__name__", type(reg).__name__)
                row = {"case": case.name, "method": label, "registered": reg,
                       "params": json.dumps(kw, sort_keys=True, default=str), "device": str(dev),
                       "seconds": seconds, "peak_mem_mib": pm.peak_bytes / 2**20, "mem_source": pm.source,
                       "iterations": info.get("iterations", math.nan),
                       "residual": res.residual}
                scores = all_metrics(chi, case.chi, case.mask) if case.chi is not None else {}
                row.update({k: float(scores.get(k, math.nan)) for k in METRICS})
                row["dgm_slope"] = math.nan
                if truth_means is not None:
                    rm = roi_means(chi, case.labels, case.mask)
                    row["dgm_slope"] = roi_slope(rm, truth_means)
                    roi += [{"case": case.name, "method": label, "label": k, "roi": DGM_LABELS[k],
                             "mean_ppm": v} for k, v in rm.items()]
                for k in ("iterations", "residual"):
                    row[k] = math.nan if row[k] is None else float(row[k])
                rows.append(row)
                if case.name in keep:
                    maps[case.name]["recon"][label] = chi.numpy()
                bar.update(1)
    finally:
        bar.close()

    result = ComparisonResult(rows, _summarise(rows, list(bound)), roi, maps)
    if out is not None:
        from .tables import write_csv, write_markdown

        result.files["csv"] = write_csv(rows, out / "metrics.csv")
        result.files["summary_csv"] = write_csv(result.summary, out / "summary.csv")
        result.files["roi_csv"] = write_csv(roi, out / "roi.csv", columns=("case", "method", "label", "roi",
                                                                           "mean_ppm"))
        result.files["markdown"] = write_markdown(result, out / "results.md")
        if figures:
            from .figures import save_figures

            result.files["figures"] = save_figures(result, out)
    return result
