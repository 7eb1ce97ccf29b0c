"""Inference: file-level prediction shared by every method (solvers now, networks later)."""

from .pipeline import DEFAULT_METHOD, get_method, method_names, predict_file, resolve_device

__all__ = ["DEFAULT_METHOD", "get_method", "method_names", "predict_file", "resolve_device"]
