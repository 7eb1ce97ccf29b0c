"""CSV and Markdown writers for comparison results (no pandas)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

#: Markdown columns: (row key, header, format). Arrows say which way is better.
MD_COLUMNS = (
    ("nrmse", "nRMSE (%) ↓", "{:.1f}"),
    ("nrmse_detrend", "dt-nRMSE (%) ↓", "{:.1f}"),
    ("hfen", "HFEN (%) ↓", "{:.1f}"),
    ("xsim", "XSIM ↑", "{:.3f}"),
    ("correlation", "corr. ↑", "{:.3f}"),
    ("dgm_slope", "DGM slope (1)", "{:.2f}"),
    ("seconds", "time (s)", "{:.2f}"),
    ("peak_mem_mib", "peak mem (MiB)", "{:.0f}"),
)


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return "" if v is None else str(v)


def write_csv(rows: Sequence[dict], path: str | os.PathLike, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows as CSV (columns: ``columns`` or the union of keys in first-seen order; NaN
    and None as empty cells; floats at full precision). Returns the path."""
    path = Path(path)
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in columns])
    os.replace(tmp, path)
    return path


def read_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed as floats and empty cells as NaN
    where the column is numeric elsewhere (other cells stay strings)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))

    def num(s):
        try:
            return float(s)
        except ValueError:
            return None

    numeric = {k for r in rows for k, v in r.items() if v != "" and num(v) is not None}
    numeric -= {k for r in rows for k, v in r.items() if v != "" and num(v) is None}
    return [{k: (float(v) if v != "" else math.nan) if k in numeric else v for k, v in r.items()}
            for r in rows]


def _fmt(fmt: str, v, std=None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    s = fmt.format(v)
    if std is not None and not math.isnan(std) and std > 0:
        s += " ± " + fmt.format(std)
    return s


def markdown_table(rows: Sequence[dict], first: Sequence[tuple[str, str]], with_std: bool = False,
                   columns=MD_COLUMNS) -> str:
    """A GitHub Markdown table: leading text columns ``first`` ((key, header) pairs), then the
    numeric ``columns``; with ``with_std`` each cell is ``mean ± std`` (keys ``<col>_std``)."""
    cols = [c for c in columns if any(not _missing(r.get(c[0])) for r in rows)]
    head = [h for _, h in first] + [h for _, h, _ in cols]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] * len(first) + ["---:"] * len(cols)) + "|"]
    for r in rows:
        cells = [str(r.get(k, "")) for k, _ in first]
        cells += [_fmt(f, r.get(k), r.get(f"{k}_std") if with_std else None) for k, _, f in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def summary_markdown(result, with_std: bool | None = None) -> str:
    """The mean-over-cases table of a :class:`~qsmnet.compare.core.ComparisonResult` (± std
    across cases when there are several)."""
    if with_std is None:
        with_std = any(s["n_cases"] > 1 for s in result.summary)
    return markdown_table(result.summary, [("method", "method")], with_std=with_std)


def write_markdown(result, path: str | os.PathLike, title: str = "QSM method comparison") -> Path:
    """``results.md``: the summary table, the per-case table and notes on units and memory."""
    path = Path(path)
    cases = list(dict.fromkeys(r["case"] for r in result.rows))
    dev = ", ".join(sorted({r["device"] for r in result.rows}))
    src = ", ".join(sorted({r["mem_source"] for r in result.rows}))
    text = [f"# {title}", "",
            f"{len(result.summary)} method(s) x {len(cases)} case(s) on {dev}. "
            "Mean over cases" + (" ± standard deviation." if len(cases) > 1 else "."), "",
            summary_markdown(result), "",
            "nRMSE, detrended nRMSE and HFEN in % (QSM-CI definitions), XSIM and correlation inside the "
            "mask; DGM slope: least-squares slope of the reconstructed against the true deep grey matter "
            "ROI means (labels 1-7, ideal 1); time: wall-clock seconds of the method call; peak mem: extra "
            f"memory during the call ({src}: see qsmnet.compare.memory).", ""]
    if len(cases) > 1:
        text += ["## Per case", "", markdown_table(result.rows, [("case", "case"), ("method", "method")])]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(text))
    os.replace(tmp, path)
    return path
