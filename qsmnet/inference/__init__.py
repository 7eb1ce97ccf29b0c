"""Inference: one call for networks and classical solvers, file-level prediction, many subjects.

- :func:`load_method`: any method under the one contract ``method(field, mask, geometry, **params)
  -> Result`` (:mod:`.contract`: :class:`Method`, :class:`Result`); :func:`method_table` lists them;
- :func:`get_method` (solvers, shipped networks, network files, ``"default"``) and
  :func:`default_method` (the best shipped network, else ``tv``): :mod:`.methods`;
- :class:`NetworkMethod`: a loaded network answering the method call, with sliding windows,
  half precision and test-time refinement: :mod:`.network`, :mod:`.windows`, :mod:`.refine`;
- :func:`predict_file` (NIfTI in, chi NIfTI + sidecar out) and :func:`predict_many`;
- :func:`run_qsm` (wrapped multi-echo phase -> chi with a report) and :func:`qsm_files` (its
  file-level form): :mod:`.qsm`, :mod:`.qsm_files`.

``DEFAULT_METHOD`` is the name :func:`default_method` gives, read when accessed (it changes when
network weights are shipped), without the note on stderr.
"""

from __future__ import annotations

from .batch import Subject, find_bids_subjects, predict_many, read_subject_list
from .contract import Method, Result
from .methods import PREFERRED_NETWORKS, default_method, get_method, load_method, method_names, method_table
from .network import NetworkMethod
from .pipeline import predict_file, resolve_device
from .qsm import QSMResult, run_qsm
from .qsm_files import qsm_files

__all__ = [
    "DEFAULT_METHOD",
    "PREFERRED_NETWORKS",
    "Method",
    "NetworkMethod",
    "QSMResult",
    "Result",
    "Subject",
    "default_method",
    "find_bids_subjects",
    "get_method",
    "load_method",
    "method_names",
    "method_table",
    "predict_file",
    "predict_many",
    "qsm_files",
    "read_subject_list",
    "resolve_device",
    "run_qsm",
]


def __getattr__(name: str):
    if name == "DEFAULT_METHOD":
        return default_method(quiet=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
