"""PNG figures of a comparison: orthogonal slices of every method's chi on one shared ppm scale with
error maps, and a metric chart. Drawn with :class:`matplotlib.figure.Figure` on the Agg canvas, so
no pyplot state or GUI backend is touched (safe in notebooks and headless CI)."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Metrics drawn by :func:`metric_chart`: (row key, title).
CHART_METRICS = (
    ("nrmse", "nRMSE (%) ↓"),
    ("nrmse_detrend", "detrended nRMSE (%) ↓"),
    ("hfen", "HFEN (%) ↓"),
    ("xsim", "XSIM ↑"),
    ("correlation", "correlation ↑"),
    ("dgm_slope", "DGM slope (ideal 1)"),
    ("seconds", "time (s)"),
)
_PLANES = ("axial", "coronal", "sagittal")
#: Display window of every chi panel (ppm): symmetric, wide enough for the deep grey nuclei
#: (globus pallidus ~0.2 ppm saturates only at its core) and still showing grey/white contrast.
CHI_WINDOW_PPM = 0.15


def safe_name(name: str) -> str:
    """A file-name-safe version of a case or method name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "case"


def slice_centre(mask: np.ndarray, labels: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel (i, j, k) the slices pass through: the centroid of the basal ganglia (labels 1-3)
    when present, else of the mask, else the grid centre."""
    candidates = [mask] if labels is None else [np.isin(labels, (1, 2, 3)), mask]
    for sel in candidates:
        if np.any(sel):
            return tuple(int(round(c)) for c in np.argwhere(sel).mean(0))
    return tuple(s // 2 for s in mask.shape)


def orthogonal_slices(vol: np.ndarray, centre, voxel_size) -> list[tuple[np.ndarray, float]]:
    """(axial, coronal, sagittal) 2D images (rows = vertical axis, for ``origin="lower"``) through
    ``centre``, each with its display aspect (vertical / horizontal voxel size)."""
    i, j, k = centre
    vx, vy, vz = voxel_size
    return [(vol[:, :, k].T, vy / vx), (vol[:, j, :].T, vz / vx), (vol[i, :, :].T, vz / vy)]


def _robust_range(values: list[np.ndarray], lo: float, hi: float) -> tuple[float, float]:
    v = np.concatenate([np.ravel(x) for x in values]) if values else np.zeros(1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -1.0, 1.0
    a, b = (float(x) for x in np.percentile(v, [lo, hi]))
    return (a, b) if b > a else (a - 1e-3, a + 1e-3)


def slice_figure(entry: dict, title: str = "", dpi: int = 110, chi_window: float = CHI_WINDOW_PPM):
    """Orthogonal slices of the truth (when known) and each method's chi, all in one fixed window
    (``±chi_window`` ppm), plus error maps on one symmetric scale (chi - truth, each demeaned
    inside the mask as nRMSE scores them); the truth row shows the input field in the error
    columns. Every error row is labelled (``<method> − truth``) and every scale has a colour bar.

    Args:
        entry: one value of ``ComparisonResult.maps`` ({"truth", "field", "mask", "labels",
            "voxel_size", "recon": {method: (X, Y, Z) array}}).
        title: figure title.

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    truth, mask, recon = entry.get("truth"), np.asarray(entry["mask"]) > 0, entry["recon"]
    centre = slice_centre(mask, entry.get("labels"))
    vs = entry["voxel_size"]
    rows = ([("truth", truth)] if truth is not None else []) + list(recon.items())
    vmin, vmax = -float(chi_window), float(chi_window)
    err_cols = truth is not None
    if err_cols:
        # Errors of the maps demeaned inside the mask, as nRMSE scores them (chi has no absolute zero).
        tm = truth[mask].mean() if mask.any() else 0.0
        errors = {k: np.where(mask, (r - (r[mask].mean() if mask.any() else 0.0)) - (truth - tm), 0.0)
                  for k, r in recon.items()}
        e = _robust_range([np.abs(x)[mask] for x in errors.values()], 0.0, 99.0)[1]
        f = _robust_range([np.abs(entry["field"])[mask]], 0.0, 99.0)[1]
    ncol = 6 if err_cols else 3
    fig = Figure(figsize=(1.75 * ncol + 1.6, 1.7 * len(rows) + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    im_chi = im_err = im_field = None
    import matplotlib

    gray = matplotlib.colormaps["gray"].with_extremes(bad="black")
    for r, (name, vol) in enumerate(rows):
        shown = np.ma.masked_array(vol, ~mask)  # outside the brain: black, off the scale
        for c, (img, aspect) in enumerate(orthogonal_slices(shown, centre, vs)):
            im_chi = axes[r, c].imshow(img, cmap=gray, vmin=vmin, vmax=vmax, origin="lower",
                                       aspect=aspect, interpolation="nearest")
        if err_cols:
            if name == "truth":
                imgs, kw = orthogonal_slices(entry["field"], centre, vs), {"cmap": "PuOr_r", "vmin": -f,
                                                                           "vmax": f}
            else:
                imgs, kw = orthogonal_slices(errors[name], centre, vs), {
                    "cmap": "RdBu_r", "vmin": -e, "vmax": e}
            for c, (img, aspect) in enumerate(imgs):
                im = axes[r, 3 + c].imshow(img, origin="lower", aspect=aspect, interpolation="nearest", **kw)
                if name == "truth":
                    im_field = im
                else:
                    im_err = im
        axes[r, 0].set_ylabel(name, fontsize=10)
        if err_cols:
            axes[r, 3].set_ylabel("field" if name == "truth" else f"{name} − truth", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    for c, p in enumerate(_PLANES):
        axes[0, c].set_title(f"χ {p}", fontsize=9)
        if err_cols:
            axes[0, 3 + c].set_title(f"field {p}" if truth is not None else "", fontsize=9)
            if len(rows) > 1:
                axes[1, 3 + c].set_title(f"error {p}", fontsize=9)
    fig.colorbar(im_chi, ax=axes[:, :3], shrink=0.8, label=f"χ (ppm), window ±{chi_window:g}", extend="both")
    if err_cols and im_err is not None:
        fig.colorbar(im_err, ax=axes[1:, 3:], shrink=0.8, label="error, demeaned (ppm)")
    if im_field is not None:
        fig.colorbar(im_field, ax=axes[0, 3:], shrink=0.8, label="field (ppm)")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def metric_chart(rows: Sequence[dict], methods: Sequence[str] | None = None, dpi: int = 110):
    """Bar chart of each metric's mean per method, with every case as a dot.

    Args:
        rows: per-(case, method) rows of a ``ComparisonResult``.
        methods: order of the bars (default: first-seen order).

    Returns:
        A :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.figure import Figure

    methods = list(methods or dict.fromkeys(r["method"] for r in rows))
    metrics = [(k, t) for k, t in CHART_METRICS
               if any(isinstance(r.get(k), float) and math.isfinite(r[k]) for r in rows)]
    n = max(len(metrics), 1)
    ncol = min(n, 4)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.0 * ncol, 2.6 * nrow), dpi=dpi, layout="constrained")
    axes = fig.subplots(nrow, ncol, squeeze=False)
    colours = [f"C{i % 10}" for i in range(len(methods))]
    x = np.arange(len(methods))
    for ax, (key, title) in zip(axes.flat, metrics, strict=False):
        for i, m in enumerate(methods):
            v = np.array([r[key] for r in rows if r["method"] == m], dtype=float)
            v = v[np.isfinite(v)]
            if v.size:
                ax.bar(i, v.mean(), color=colours[i], alpha=0.75)
                jitter = np.linspace(-0.2, 0.2, v.size) if v.size > 1 else np.zeros(1)
                ax.plot(i + jitter, v, "k.", ms=3)
        if key == "dgm_slope":
            ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, methods, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    return fig


def save_figures(result, out_dir: str | os.PathLike) -> list[Path]:
    """Write ``slices_<case>.png`` for each case in ``result.maps`` and ``metrics.png``."""
    out = Path(out_dir)
    paths = []
    for case, entry in result.maps.items():
        p = out / f"slices_{safe_name(case)}.png"
        slice_figure(entry, title=case).savefig(p)
        paths.append(p)
    p = out / "metrics.png"
    metric_chart(result.rows, result.methods).savefig(p)
    paths.append(p)
    return paths
