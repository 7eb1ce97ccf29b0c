"""File-level prediction: NIfTI field (+ mask) in, chi NIfTI + JSON sidecar out.

One path for every method: :func:`get_method` maps a name to a callable answering
``method(field, mask, geometry, *, info=None, **params) -> chi`` (for now the classical solvers
of :mod:`qsmnet.solvers`; networks join here later).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from qsmnet.errors import QSMNetError

#: Method used when none is named.
DEFAULT_METHOD = "tv"


def get_method(name: str) -> Callable:
    """The method registered under ``name`` (a classical solver for now).

    Raises:
        QSMNetError: unknown name, listing the choices.
    """
    from qsmnet.solvers import get_solver

    return get_solver(name)


def method_names() -> list[str]:
    """Names :func:`get_method` accepts."""
    from qsmnet.solvers import SOLVERS

    return sorted(SOLVERS)


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available else CPU (with a note on stderr); ``"cuda"`` must exist."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        print("qsmnet: note: no CUDA device found, running on the CPU", file=sys.stderr)
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise QSMNetError("--device cuda was requested but no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise QSMNetError(f"unknown device {device!r}: choose auto, cpu or cuda")
    return torch.device(device)


def _check_like(vol, ref, what: str) -> None:
    if vol.data.shape[:3] != ref.data.shape[:3] or vol.data.ndim != 3:
        raise QSMNetError(
            f"{what} {vol.path} has shape {vol.data.shape}, but the field has shape {ref.data.shape}"
        )
    if not np.allclose(vol.affine, ref.affine, atol=1e-4):
        raise QSMNetError(f"{what} {vol.path} is not on the field's grid (its affine differs)")


def predict_file(
    field_path,
    mask_path,
    out_path,
    method: str = DEFAULT_METHOD,
    params: dict | None = None,
    units: str = "ppm",
    b0: float | None = None,
    te: float | None = None,
    voxel_size: Sequence[float] | None = None,
    b0_dir: Sequence[float] | None = None,
    magnitude_path=None,
    device: str = "auto",
    force: bool = False,
) -> dict:
    """Reconstruct chi (ppm) from a local-field NIfTI and write it beside a JSON sidecar.

    Args:
        field_path: 3D local field (``units``), NIfTI.
        mask_path: brain mask on the field's grid (non-zero inside).
        out_path: output chi NIfTI (ppm, the field's grid and affine); ``<stem>.json`` beside it.
        method: a name from :func:`method_names`.
        params: method parameters (e.g. ``{"lam": 3e-4, "iterations": 250}``).
        units: the field's units, ``ppm``, ``hz`` (needs ``b0``) or ``rad`` (needs ``b0``, ``te``).
        b0: field strength (T).
        te: echo time (s).
        voxel_size: override of the header's voxel size (mm).
        b0_dir: override of the B0 direction (voxel axes) derived from the affine.
        magnitude_path: optional magnitude image (used by methods that take ``magnitude``).
        device: ``auto``, ``cpu`` or ``cuda``.
        force: overwrite existing outputs.

    Returns:
        The sidecar dict that was written.

    Raises:
        QSMNetError: any user-fixable problem; no output file is written then.
    """
    import inspect

    import torch

    from qsmnet.io import check_output, load_nifti, save_nifti
    from qsmnet.physics import Geometry, to_ppm

    check_output(out_path, force)
    fn = get_method(method)
    params = dict(params or {})
    accepted = inspect.signature(fn).parameters
    unknown = sorted(k for k in params if k not in accepted or k in ("field", "mask", "geometry", "info"))
    if unknown:
        raise QSMNetError(f"method {method!r} does not take parameter(s) {', '.join(unknown)}")

    field = load_nifti(field_path, what="field")
    if field.data.ndim != 3:
        raise QSMNetError(
            f"field file {field.path} is {field.data.ndim}D {field.data.shape}; a 3D local field is needed"
        )
    mask = load_nifti(mask_path, what="mask")
    _check_like(mask, field, "mask")
    m = mask.data != 0
    if not m.any():
        raise QSMNetError(f"mask {mask.path} is empty (no non-zero voxel)")
    if not np.isfinite(field.data[m]).all():
        raise QSMNetError(f"field {field.path} has NaN or Inf values inside the mask")
    try:
        f = np.asarray(to_ppm(np.where(m, field.data, 0.0), units, b0=b0, te=te), dtype=np.float32)
    except ValueError as e:
        raise QSMNetError(str(e)) from None

    geometry = field.geometry
    b0_source = "affine"
    if voxel_size is not None:
        geometry = geometry.with_(voxel_size=tuple(float(v) for v in voxel_size))
    if b0_dir is not None:
        geometry = geometry.with_(b0_dir=tuple(float(v) for v in b0_dir))
        b0_source = "override"
    geometry = Geometry(geometry.shape, geometry.voxel_size, geometry.b0_dir)

    dev = resolve_device(device)
    if magnitude_path is not None:
        if "magnitude" not in accepted:
            raise QSMNetError(f"method {method!r} does not use a magnitude image (try medi or ndi)")
        mag = load_nifti(magnitude_path, what="magnitude")
        _check_like(mag, field, "magnitude")
        params["magnitude"] = torch.from_numpy(np.nan_to_num(mag.data)).to(dev)
    if method == "ndi" and "phase_scale" not in params and b0 is not None and te is not None:
        from qsmnet.physics import ppm_to_rad

        params["phase_scale"] = float(ppm_to_rad(1.0, te=te, b0=b0))

    info: dict = {}
    t0 = time.perf_counter()
    chi = fn(torch.from_numpy(f).to(dev), torch.from_numpy(m).to(dev), geometry, info=info, **params)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0

    shown = {k: v for k, v in params.items() if k != "magnitude"}
    if magnitude_path is not None:
        shown["magnitude"] = str(magnitude_path)
    sidecar = {
        "method": method,
        "parameters": shown,
        "iterations": info.get("iterations"),
        "residual": info.get("residual"),
        "seconds": round(seconds, 4),
        "device": str(dev),
        "units_in": units,
        "b0_dir": list(geometry.b0_dir),
        "b0_dir_source": b0_source,
        "voxel_size": list(geometry.voxel_size),
        "units_out": "ppm",
    }
    if "lambda" in info:
        sidecar["lambda"] = info["lambda"]
    save_nifti(out_path, chi.detach().cpu().numpy(), field.affine, field.header, force=force, sidecar=sidecar)
    return sidecar
