"""The whole QSM pipeline in memory: wrapped multi-echo phase (+ magnitude) -> chi (ppm), with a report.

Steps (each a function of :mod:`qsmnet.phase`, timed and logged through :mod:`logging`):

1. ``mask``: the given brain mask, else :func:`~qsmnet.phase.brain_mask` of the magnitude;
2. ``echo_fit``: :func:`~qsmnet.phase.fit_field` -> total field (Hz) and its std -> ppm
   (``ppm = Hz / (42.577478 * B0)``);
3. ``background``: :func:`~qsmnet.phase.vsharp` (default) or :func:`~qsmnet.phase.pdf`
   (weighted by the inverse field std) -> local field (ppm) and the mask where it is valid;
4. ``inversion``: any method of :func:`qsmnet.inference.methods.load_method` on the local field,
   mask and geometry (default ``"default"``: the default network under its out-of-domain guard);
5. ``reference``: :func:`~qsmnet.phase.reference` (mean over the mask, or a given CSF mask).

The report lists every step with its function, parameters, numbers and seconds, plus the inputs
and the versions of qsmnet, torch, numpy, scipy and scikit-image.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry, hz_to_ppm

log = logging.getLogger("qsmnet.qsm")

#: Default dipole-inversion method of the pipeline: ``"default"``, the default network under its
#: out-of-domain guard (TV when it flags, or when no network is cleared; :func:`.methods.load_default`).
QSM_METHOD = "default"
UNWRAPPERS = ("quality", "laplacian")
BFR_METHODS = ("vsharp", "pdf")


@dataclass
class QSMResult:
    """Outputs of :func:`run_qsm`, (X, Y, Z) float32 CPU tensors on the input grid.

    Attributes:
        chi: referenced susceptibility (ppm), zero outside ``mask``.
        local_field: local field (ppm), zero outside ``mask``.
        total_field: total field (ppm), zero outside ``brain_mask``.
        mask: bool mask where the local field and chi are valid (eroded by background removal).
        brain_mask: bool mask the echo fit used.
        field_std: standard error of the total field (ppm).
        report: steps, parameters, timings, versions (JSON-serialisable).
    """

    chi: torch.Tensor
    local_field: torch.Tensor
    total_field: torch.Tensor
    mask: torch.Tensor
    brain_mask: torch.Tensor
    field_std: torch.Tensor
    report: dict


def versions() -> dict:
    """Versions of qsmnet and the libraries the pipeline's numbers depend on."""
    import scipy
    import skimage

    from qsmnet import __version__

    return {"qsmnet": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "skimage": skimage.__version__}  # fmt: skip


class _Steps:
    def __init__(self, device):
        self.steps: list[dict] = []
        self.device = device

    def run(self, name: str, function: str, params: dict, fn: Callable):
        log.info("%s: %s %s", name, function, params or "")
        t0 = time.perf_counter()
        out, details = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        entry = {
            "name": name,
            "function": function,
            "parameters": params,
            **details,
            "seconds": round(seconds, 4),
        }
        self.steps.append(entry)
        shown = ", ".join(f"{k} {v}" for k, v in details.items() if isinstance(v, (int, float, str)))
        log.info("%s: done in %.2f s%s", name, seconds, f" ({shown})" if shown else "")
        return out


def _fraction(m: torch.Tensor) -> float:
    return round(float(m.float().mean()), 6)


def run_qsm(
    phase,
    magnitude,
    te: Sequence[float],
    b0: float,
    geometry: Geometry,
    *,
    mask=None,
    unwrap: str = "quality",
    bfr: str = "vsharp",
    method: str | Callable = QSM_METHOD,
    method_params: dict | None = None,
    bfr_params: dict | None = None,
    mask_params: dict | None = None,
    csf_mask=None,
    device="cpu",
) -> QSMResult:
    """Wrapped phase (rad) and magnitude of E echoes -> susceptibility (ppm) and the maps on the way.

    Args:
        phase: (E, X, Y, Z) or (X, Y, Z) wrapped phase (rad), array or tensor.
        magnitude: same shape, or None (then ``mask`` is required and echoes weigh equally).
        te: E echo times (s).
        b0: field strength (T).
        geometry: grid, voxel size (mm) and B0 direction (voxel axes), e.g. from the affine.
        mask: optional (X, Y, Z) brain mask (non-zero inside); default: from the magnitude.
        unwrap: ``"quality"`` (exact, scikit-image) or ``"laplacian"`` (least squares).
        bfr: background-field removal, ``"vsharp"`` or ``"pdf"``.
        method: inversion method name or callable (see :func:`~qsmnet.inference.load_method`).
        method_params: keyword parameters of the method (e.g. ``{"lam": 5e-5}``).
        bfr_params: keyword parameters of :func:`~qsmnet.phase.vsharp` / :func:`~qsmnet.phase.pdf`.
        mask_params: keyword parameters of :func:`~qsmnet.phase.brain_mask`.
        csf_mask: optional (X, Y, Z) reference region for chi (default: the whole mask).
        device: torch device for the tensor steps.

    Returns:
        :class:`QSMResult`.

    Raises:
        QSMNetError: inconsistent inputs (shapes, echo counts, echo times, no mask and no
            magnitude, an empty mask), an unknown step option or a method parameter the method
            does not take (checked before any step runs).
    """
    from qsmnet import phase as ph

    from .methods import load_method
    from .pipeline import resolve_device

    p = torch.as_tensor(np.asarray(phase, dtype=np.float32) if not isinstance(phase, torch.Tensor) else phase)
    p = p[None] if p.dim() == 3 else p
    te = [float(t) for t in te]
    _check_inputs(p, magnitude, te, b0, geometry, mask, unwrap, bfr)
    fn = load_method(method)
    label = fn.name
    mparams = dict(method_params or {})
    fn.check_params(mparams)  # before the minutes of unwrapping and background removal
    dev = resolve_device(device)
    p = p.to(dev, torch.float32)
    mag = None if magnitude is None else torch.as_tensor(np.asarray(magnitude, dtype=np.float32)).to(dev)
    if mag is not None:
        mag = mag.reshape(p.shape)
    steps = _Steps(dev)
    t_start = time.perf_counter()

    if mask is not None:
        given = torch.as_tensor(np.asarray(mask) != 0).to(dev)
        bm = steps.run("mask", "given", {}, lambda: (given, {"coverage": _fraction(given)}))
    else:
        mp = dict(mask_params or {})
        bm = steps.run("mask", "qsmnet.phase.brain_mask", mp, lambda: _mask(ph, mag, geometry, mp))
    if not bool(bm.any()):
        raise QSMNetError("the brain mask is empty")

    def echo_fit():
        hz, _, std = ph.fit_field(p, mag, te, bm, voxel_size=geometry.voxel_size, unwrap=unwrap)
        tot, sd = hz_to_ppm(hz, b0), hz_to_ppm(std, b0)
        inside = tot[bm]
        return (tot, sd), {"field_ppm_p1_p99": [round(float(q), 5) for q in torch.quantile(
            inside[:: max(1, inside.numel() // 100000)], torch.tensor([0.01, 0.99], device=dev))],
            "median_std_ppm": round(float(sd[bm].median()), 6)}  # fmt: skip

    total, std = steps.run("echo_fit", "qsmnet.phase.fit_field", {"unwrap": unwrap, "te_s": te, "b0_t": b0},
                           echo_fit)  # fmt: skip

    bp = dict(bfr_params or {})

    def background():
        info: dict = {}
        if bfr == "vsharp":
            loc, m = ph.vsharp(total, bm, geometry.voxel_size, **bp)
        else:
            w = bm / std.clamp_min(float(std[bm].median()) * 1e-2)
            loc, m = ph.pdf(total, bm, geometry, weight=w, info=info, **bp)
        return (loc, m), {"coverage": _fraction(m), "kept_of_brain_mask": round(float(m.sum() / bm.sum()), 4),
                          **info}  # fmt: skip

    local, m = steps.run("background", f"qsmnet.phase.{bfr}", bp, background)
    if not bool(m.any()):
        raise QSMNetError(f"{bfr} left no voxel of the mask; pass a larger mask or smaller radii")

    def inversion():
        res = fn(local, m, geometry, **mparams)
        keep = {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, dict, list, type(None)))}
        return res.chi, {"parameters_used": res.params, **keep}

    chi = steps.run("inversion", label, mparams, inversion)
    csf = None if csf_mask is None else torch.as_tensor(np.asarray(csf_mask) != 0).to(dev)
    region = {"region": "mask" if csf is None else "csf_mask"}
    ref = steps.run("reference", "qsmnet.phase.reference", region, lambda: (ph.reference(chi, m, csf), {}))
    report = {
        "inputs": {
            "echoes": int(p.shape[0]),
            "te_s": te,
            "b0_t": float(b0),
            "shape": list(geometry.shape),
            "voxel_size_mm": list(geometry.voxel_size),
            "b0_dir": list(geometry.b0_dir),
            "magnitude": mag is not None,
            "mask_given": mask is not None,
        },  # fmt: skip
        "steps": steps.steps,
        "method": label,
        "device": str(dev),
        "units": {"chi": "ppm", "localfield": "ppm", "totalfield": "ppm"},
        "versions": versions(),
        "seconds": round(time.perf_counter() - t_start, 4),
    }

    def cpu(x):
        return x.detach().cpu()

    return QSMResult(cpu(ref), cpu(local * m), cpu(total * bm), cpu(m), cpu(bm), cpu(std), report)


def _mask(ph, mag, geometry, params):
    m = ph.brain_mask(mag, geometry.voxel_size, **params)
    return m, {"coverage": _fraction(m)}


def _check_inputs(p, magnitude, te, b0, geometry, mask, unwrap, bfr) -> None:
    if p.dim() != 4:
        raise QSMNetError(f"phase must be (E, X, Y, Z) or (X, Y, Z), got shape {tuple(p.shape)}")
    if tuple(p.shape[1:]) != geometry.shape:
        raise QSMNetError(f"phase grid {tuple(p.shape[1:])} does not match the geometry {geometry.shape}")
    if len(te) != p.shape[0]:
        raise QSMNetError(f"{p.shape[0]} phase echo(es) but {len(te)} echo time(s)")
    if min(te) <= 0:
        raise QSMNetError(f"echo times must be positive seconds, got {te}")
    if max(te) >= 0.5:
        raise QSMNetError(f"echo times {te} look like milliseconds; give seconds (e.g. 0.004)")
    if not b0 or b0 <= 0:
        raise QSMNetError(f"the field strength must be a positive number of tesla, got {b0}")
    if magnitude is None and mask is None:
        raise QSMNetError("without a magnitude image a brain mask is needed (pass a mask)")
    shapes = (tuple(p.shape), tuple(p.shape[1:]) if p.shape[0] == 1 else None)
    if magnitude is not None and tuple(np.shape(magnitude)) not in shapes:
        raise QSMNetError(
            f"magnitude shape {tuple(np.shape(magnitude))} does not match phase {tuple(p.shape)}"
        )
    if mask is not None and tuple(np.shape(mask)) != geometry.shape:
        raise QSMNetError(f"mask shape {tuple(np.shape(mask))} does not match the grid {geometry.shape}")
    if unwrap not in UNWRAPPERS:
        raise QSMNetError(f"unknown unwrapping {unwrap!r}: choose {' or '.join(UNWRAPPERS)}")
    if bfr not in BFR_METHODS:
        raise QSMNetError(f"unknown background-field removal {bfr!r}: choose {' or '.join(BFR_METHODS)}")
