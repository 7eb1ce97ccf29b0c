"""Methods x cases -> tables and figures (``qsmnet compare``, ``qsmnet demo``).

Imports inference, metrics, sim, io (and data for loading cases).

    >>> from qsmnet.compare import run_comparison
    >>> res = run_comparison(["tkd", "tikhonov", "tv"], cases, out_dir="compare-out")
    >>> print(summary_markdown(res))
"""

from .cases import benchmark_cache_dir, demo_case, load_cases
from .core import DGM_LABELS, METRICS, Case, ComparisonResult, as_case, roi_means, roi_slope, run_comparison
from .figures import metric_chart, save_figures, slice_figure
from .memory import PeakMemory
from .methods import normalise_methods
from .tables import markdown_table, read_csv, summary_markdown, write_csv, write_markdown

__all__ = [
    "DGM_LABELS",
    "METRICS",
    "Case",
    "ComparisonResult",
    "PeakMemory",
    "as_case",
    "benchmark_cache_dir",
    "demo_case",
    "load_cases",
    "markdown_table",
    "metric_chart",
    "normalise_methods",
    "read_csv",
    "roi_means",
    "roi_slope",
    "run_comparison",
    "save_figures",
    "slice_figure",
    "summary_markdown",
    "write_csv",
    "write_markdown",
]
