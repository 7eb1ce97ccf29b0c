"""Peak memory of one method call, on the device it runs on.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
  allocated before the call: the peak of *extra tensor memory* the call needed on the GPU
  (PyTorch's caching allocator; excludes the CUDA context and cached-but-free blocks).
- CPU: the process's resident set size (RSS), sampled every ``interval`` seconds by a background
  thread from ``/proc/self/statm`` during the call, peak minus the RSS before the call: the peak of
  *extra resident memory* the call needed (tensors, numpy arrays, FFT plans, everything). Samples
  can miss a short spike shorter than ``interval``. Before the call, glibc's ``malloc_trim(0)``
  hands freed heap pages back to the system, so memory the process freed earlier (and would
  reuse without touching new pages) does not hide the call's needs. Where ``/proc`` does not exist (macOS,
  Windows) it falls back to the ``resource.getrusage`` high-water mark, whose increase is only
  seen when the call exceeds the process's earlier peak (so it can read 0 for a later, smaller call).
"""

from __future__ import annotations

import os
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"


def _rss_bytes() -> int | None:
    try:
        with open(_STATM) as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _trim_heap() -> None:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_bytes() -> int:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Context manager measuring the peak extra memory (bytes) of the code it wraps.

    Args:
        device: a ``torch.device`` (or its string); CUDA devices use the allocator statistics.
        interval: RSS sampling period (s) on the CPU.

    Attributes:
        peak_bytes: after the block, the peak extra memory (>= 0).
        source: ``"cuda_max_allocated"``, ``"rss_sampled"`` or ``"ru_maxrss"``, what was measured.

    Example::

        with PeakMemory("cpu") as pm:
            chi = method(field, mask, geometry)
        print(pm.peak_bytes / 2**20, "MiB")
    """

    def __init__(self, device="cpu", interval: float = 0.002):
        self.device = str(device)
        self.interval = interval
        self.peak_bytes = 0
        self.source = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            r = _rss_bytes()
            if r is not None and r > self._peak:
                self._peak = r

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.source = "cuda_max_allocated"
            return self
        _trim_heap()
        base = _rss_bytes()
        if base is None:
            self._base = _maxrss_bytes()
            self.source = "ru_maxrss"
            return self
        self._base = self._peak = base
        self.source = "rss_sampled"
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.source == "cuda_max_allocated":
            import torch

            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.source == "ru_maxrss":
            peak = _maxrss_bytes()
        else:
            self._stop.set()
            self._thread.join()
            r = _rss_bytes()
            peak = max(self._peak, r if r is not None else 0)
        self.peak_bytes = max(0, int(peak - self._base))


def timed(fn, device) -> tuple[object, float, PeakMemory]:
    """Run ``fn()`` and return ``(result, seconds, PeakMemory)``, synchronising CUDA around it."""
    import torch

    dev = str(device)
    with PeakMemory(dev) as pm:
        t0 = time.perf_counter()
        out = fn()
        if dev.startswith("cuda"):
            torch.cuda.synchronize(dev)
        seconds = time.perf_counter() - t0
    return out, seconds, pm
