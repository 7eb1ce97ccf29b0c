"""Whole-volume or sliding-window network inference, chosen from a memory estimate.

The dipole field is nonlocal: the field in a window holds contributions of sources outside it, and
a window's sources spill field beyond it. Windows therefore overlap by :data:`DEFAULT_OVERLAP` and
are blended with a Gaussian weight (MONAI ``sliding_window_inference``, ``mode="gaussian"``), so a
voxel's value comes mostly from windows in which it lies well inside (a context margin of about a
quarter window on every side); the volume is zero-padded by that margin too (chi and the masked
field are zero outside the brain), so border voxels also sit inside a window.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Peak extra memory of a network's no-grad forward pass, in bytes per input voxel. Measured on the
#: CPU (peak RSS growth, float32) with the shipped configurations at 48^3-160^3 (``python
#: scripts/benchmark_inference.py --memory``): QSMUNet (16-128 channels) 110-530, LPCNN (4 x 16
#: features) 400-490; small volumes cost more per voxel. Rounded up; keyed by class name.
BYTES_PER_VOXEL = {"QSMUNet": 600, "QSMCascade": 600, "LPCNN": 600, "VarNet": 600, "MoDL": 800}
#: Bytes per voxel of classes not listed above.
DEFAULT_BYTES_PER_VOXEL = 1000
#: A training step (forward + backward + Adam) costs about this many forward passes of memory.
TRAIN_FACTOR = 4.0
#: Fraction of the free memory inference may plan to use.
MEMORY_FRACTION = 0.5
#: Memory assumed free when it cannot be read (bytes).
FALLBACK_AVAILABLE = 4 * 1024**3
#: Window overlap (fraction of the window) of sliding-window inference.
DEFAULT_OVERLAP = 0.5
#: Fraction of a window, at each windowed face, that serves only as context (see :func:`context_weights`).
CONTEXT_FRACTION = 0.125
#: Smallest and largest window edge (voxels) chosen automatically; edges are multiples of 16.
MIN_WINDOW, MAX_WINDOW = 32, 256


def estimate_bytes(net: nn.Module, n_voxels: int, train: bool = False) -> int:
    """Estimated peak extra memory (bytes) of running ``net`` on ``n_voxels`` voxels (batch of 1)."""
    bpv = BYTES_PER_VOXEL.get(type(net).__name__, DEFAULT_BYTES_PER_VOXEL)
    return int(bpv * n_voxels * (TRAIN_FACTOR if train else 1.0))


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (bytes): CUDA's free memory, or MemAvailable from /proc/meminfo."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return FALLBACK_AVAILABLE


def plan(
    net: nn.Module,
    shape: Sequence[int],
    device: torch.device,
    window="auto",
    max_memory: float | None = None,
    train: bool = False,
) -> dict:
    """Decide between whole-volume inference and sliding windows.

    Args:
        net: the network (its class selects :data:`BYTES_PER_VOXEL`).
        shape: (X, Y, Z) grid the network runs on.
        device: where it runs.
        window: ``"auto"`` (from the memory estimate), ``"off"`` (whole volume), or an int
            window edge in voxels (always windows).
        max_memory: memory budget in bytes (default: :data:`MEMORY_FRACTION` of the free memory).
        train: plan for gradient steps (``--refine``) rather than a forward pass.

    Returns:
        ``{"mode": "whole" | "windows", "roi": (3 ints) or None, "estimate_bytes", "budget_bytes"}``.
    """
    shape = tuple(int(s) for s in shape)
    budget = int(max_memory) if max_memory else int(MEMORY_FRACTION * available_bytes(device))
    need = estimate_bytes(net, math.prod(shape), train)
    out = {"mode": "whole", "roi": None, "estimate_bytes": need, "budget_bytes": budget}
    if window == "off" or (window == "auto" and need <= budget):
        return out
    if window == "auto":
        edge = MIN_WINDOW
        for n in range(MAX_WINDOW, MIN_WINDOW - 1, -16):
            if estimate_bytes(net, n**3, train) <= budget:
                edge = n
                break
    else:
        edge = int(window)
        if edge < 8:
            raise ValueError(f"window must be at least 8 voxels, got {edge}")
    roi = tuple(min(edge, s) for s in shape)
    if roi == shape and window == "auto":
        return out
    out.update(mode="windows", roi=roi, estimate_bytes=estimate_bytes(net, math.prod(roi), train))
    return out


def margin_for(roi: Sequence[int], shape: Sequence[int], multiple: int = 1) -> tuple[int, int, int]:
    """Zero padding (voxels per side) added before windowing: a quarter window on windowed axes,
    rounded up to a multiple of ``multiple``."""
    return tuple(-(-(r // 4) // multiple) * multiple if r < s else 0 for r, s in zip(roi, shape, strict=True))


def context_weights(roi: Sequence[int], windowed: Sequence[bool], device=None) -> torch.Tensor:
    """Blending weight of one window: MONAI's Gaussian (sigma = roi / 8), with a ring of
    :data:`CONTEXT_FRACTION` of the window on each windowed face set to (almost) zero, so the
    voxels next to a window's edge, which miss the field of sources beyond it, are taken from a
    neighbouring window instead. Returns (1, 1, *roi) float32."""
    from monai.data.utils import compute_importance_map

    w = compute_importance_map(tuple(roi), mode="gaussian", sigma_scale=0.125, device=device)
    w = torch.as_tensor(w, dtype=torch.float32).reshape(1, 1, *roi).clone()
    floor = 1e-6 * float(w.min())
    for axis, (r, on) in enumerate(zip(roi, windowed, strict=True)):
        c = max(1, int(r * CONTEXT_FRACTION)) if on else 0
        if c:
            w.narrow(axis + 2, 0, c).fill_(floor)
            w.narrow(axis + 2, r - c, c).fill_(floor)
    return w


def sliding_windows(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    field: torch.Tensor,
    mask: torch.Tensor,
    roi: Sequence[int],
    overlap: float = DEFAULT_OVERLAP,
    multiple: int = 1,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``fn(field_window, mask_window) -> chi_window`` over overlapping, Gaussian-blended windows.

    Args:
        fn: the network call on (B, 1, x, y, z) windows (it builds its dipole operator on the
            window's shape; pass the geometry in through a closure).
        field: (B, 1, X, Y, Z) local field (ppm), zero outside the mask.
        mask: (B, 1, X, Y, Z) 0/1 mask.
        roi: window edge per axis (voxels).
        overlap: fraction of a window shared with its neighbour (0 <= overlap < 1).
        multiple: window corners are kept on multiples of this (relative to the volume's corner),
            so a network with strided downsampling by ``multiple`` (a U-Net) samples each window
            on the grid it uses on the whole volume.
        extra: optional (B, C, X, Y, Z) channels computed on the whole grid (a network's initial
            estimate and its guide channels), windowed alongside and passed as
            ``fn(field_w, mask_w, extra_w)``.

    Returns:
        (B, 1, X, Y, Z) chi (ppm) on the input's device, zero outside the mask.
    """
    from monai.inferers import sliding_window_inference

    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    shape = tuple(field.shape[-3:])
    roi = tuple(min(int(r), s) for r, s in zip(roi, shape, strict=True))
    m = margin_for(roi, shape, multiple)
    # End padding so the last window's corner (padded - roi) also lies on the multiple grid.
    end = [mi + (r - s - 2 * mi) % multiple if r < s else 0 for mi, s, r in zip(m, shape, roi, strict=True)]
    parts = [field, mask] if extra is None else [field, mask, extra.to(field.dtype)]
    x = nn.functional.pad(torch.cat(parts, dim=1), (m[2], end[2], m[1], end[1], m[0], end[0]))
    # Per-axis overlap whose scan interval int(roi * (1 - overlap)) is a multiple of ``multiple``.
    overlaps = []
    for r in roi:
        step = max(multiple, int(r * (1 - overlap)) // multiple * multiple)
        overlaps.append(max(0.0, 1 - (step + 1e-6) / r))

    def predictor(window: torch.Tensor) -> torch.Tensor:
        parts = (window[:, :1], window[:, 1:2]) + ((window[:, 2:],) if extra is not None else ())
        return fn(*parts).float()  # field, mask[, extra]

    out = sliding_window_inference(
        x,
        roi,
        1,
        predictor,
        overlap=overlaps,
        mode="gaussian",
        padding_mode="constant",
        roi_weight_map=context_weights(roi, [r < s for r, s in zip(roi, shape, strict=True)], x.device),
    )
    out = torch.as_tensor(out)[..., m[0] : m[0] + shape[0], m[1] : m[1] + shape[1], m[2] : m[2] + shape[2]]
    return out.contiguous() * mask
