"""File-level prediction: NIfTI field (+ mask) in, chi NIfTI + JSON sidecar out.

One path for every method (networks and classical solvers, see :mod:`qsmnet.inference.methods`):
read and check the inputs, convert the field to ppm, take the geometry from the affine, warn about
suspicious inputs, run the method, and write chi (ppm, float32, the input's grid and affine) with a
sidecar (method and model version, units, B0 direction and its source, voxel size, relative
data-consistency residual ``||M (D * chi - f)|| / ||M f||``, wall time, device, warnings).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path

import numpy as np

from qsmnet.errors import QSMNetError

from .methods import DEFAULT_ALIAS, default_method, get_method, load_method, method_names  # noqa: F401

#: A mask covering more than this fraction of the volume draws a warning (no background left).
FULL_MASK_FRACTION = 0.98
log = logging.getLogger(__name__)


def resolve_device(device="auto"):
    """``"auto"`` -> CUDA when available else CPU (with a note on stderr); ``"cuda"`` must exist.

    A :class:`torch.device` is returned unchanged.
    """
    import torch

    if isinstance(device, torch.device):
        return device
    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("no CUDA device found, running on the CPU")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise QSMNetError("--device cuda was requested but no CUDA device is available (use --device cpu)")
    if device not in ("cpu", "cuda"):
        raise QSMNetError(f"unknown device {device!r}: choose auto, cpu or cuda")
    return torch.device(device)


def log_warning(message: str) -> None:
    """Default warning sink: the ``qsmnet`` logger (one line on stderr under the CLI)."""
    log.warning(message)


def _check_like(vol, ref, what: str) -> None:
    if vol.data.shape[:3] != ref.data.shape[:3] or vol.data.ndim != 3:
        raise QSMNetError(
            f"{what} {vol.path} has shape {vol.data.shape}, but the field has shape {ref.data.shape}"
        )
    if not np.allclose(vol.affine, ref.affine, atol=1e-4):
        raise QSMNetError(f"{what} {vol.path} is not on the field's grid (its affine differs)")


@dataclass
class Inputs:
    """Checked inputs of one subject.

    Attributes:
        volume: the field's NIfTI (affine and header are reused for the output).
        field: (X, Y, Z) float32 field in ppm, zero outside the mask.
        mask: (X, Y, Z) bool mask.
        geometry: grid, voxel size (mm) and B0 direction (voxel axes) used.
        b0_source: ``"affine"`` or ``"override"``.
        warnings: one line per suspicious property (not fatal).
    """

    volume: object
    field: np.ndarray
    mask: np.ndarray
    geometry: object
    b0_source: str
    warnings: list[str] = dc_field(default_factory=list)


def load_inputs(field_path, mask_path, units="ppm", b0=None, te=None, voxel_size=None, b0_dir=None) -> Inputs:
    """Read and check a field and its mask; convert the field to ppm.

    Raises:
        QSMNetError: missing/corrupt/non-NIfTI file, 4D field, mask of another shape or affine,
            empty mask, NaN/Inf inside the mask, or missing ``b0``/``te`` for the units.
    """
    from qsmnet.io import guess_units, load_nifti
    from qsmnet.physics import Geometry, to_ppm

    vol = load_nifti(field_path, what="field")
    if vol.data.ndim != 3:
        raise QSMNetError(
            f"field file {vol.path} is {vol.data.ndim}D {vol.data.shape}; a 3D local field is needed"
        )
    mask = load_nifti(mask_path, what="mask")
    _check_like(mask, vol, "mask")
    m = mask.data != 0
    if not m.any():
        raise QSMNetError(f"mask {mask.path} is empty (no non-zero voxel)")
    if not np.isfinite(vol.data[m]).all():
        raise QSMNetError(f"field {vol.path} has NaN or Inf values inside the mask")
    try:
        f = np.asarray(to_ppm(np.where(m, vol.data, 0.0), units, b0=b0, te=te), dtype=np.float32)
    except ValueError as e:
        raise QSMNetError(str(e)) from None

    geometry, source = vol.geometry, "affine"
    if voxel_size is not None:
        geometry = geometry.with_(voxel_size=tuple(float(v) for v in voxel_size))
    if b0_dir is not None:
        geometry, source = geometry.with_(b0_dir=tuple(float(v) for v in b0_dir)), "override"
    geometry = Geometry(geometry.shape, geometry.voxel_size, geometry.b0_dir)

    warnings = []
    guess = guess_units(vol.data, m)
    if units.lower() == "ppm" and guess != "ppm":
        p99 = float(np.percentile(np.abs(vol.data[m]), 99))
        hint = "--units rad --te TE --b0 B0" if guess == "rad" else "--units hz --b0 B0"
        warnings.append(
            f"field values look like {guess}, not ppm (99th percentile |f| = {p99:.3g}); if so pass {hint}"
        )
    if m.mean() > FULL_MASK_FRACTION:
        warnings.append(f"mask {mask.path} covers {100 * m.mean():.0f}% of the volume; is it a brain mask?")
    return Inputs(vol, f, m, geometry, source, warnings)


def ignored_options(units: str, b0: float | None, te: float | None, method: str) -> list[str]:
    """Warnings for a field strength or echo time that the chosen units (and method) do not use.

    ``ppm`` needs neither, ``hz`` needs ``b0`` only; ``ndi`` uses both for its phase scale."""
    if method == "ndi":
        return []
    unused = {"ppm": ("b0", "te"), "hz": ("te",)}.get(units.lower(), ())
    given = [n for n in unused if {"b0": b0, "te": te}[n] is not None]
    if not given:
        return []
    return [f"{' and '.join(given)} {'are' if len(given) > 1 else 'is'} not used for a field in {units} "
            f"(only for phase in rad{'' if 'b0' in given else ' or frequency in Hz'}); ignored"]  # fmt: skip


def file_sha256(path) -> str:
    """``"sha256:<hex>"`` of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _input_entry(path) -> dict:
    return {"path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def effective_parameters(used: dict, given: dict, magnitude_path=None) -> dict:
    """The parameters actually used, for a sidecar: arrays replaced by their source path."""
    out = {}
    for k, v in used.items():
        if k == "magnitude":
            v = None if magnitude_path is None else str(magnitude_path)
        elif hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
            v = f"array {tuple(v.shape)}"
        out[k] = v
    return out


def predict_file(
    field_path,
    mask_path,
    out_path,
    method: str | Callable | None = None,
    params: dict | None = None,
    units: str = "ppm",
    b0: float | None = None,
    te: float | None = None,
    voxel_size: Sequence[float] | None = None,
    b0_dir: Sequence[float] | None = None,
    magnitude_path=None,
    device="auto",
    force: bool = False,
    residual_map=None,
    warn: Callable[[str], None] | None = log_warning,
) -> dict:
    """Reconstruct chi (ppm) from a local-field NIfTI and write it beside a JSON sidecar.

    Args:
        field_path: 3D local field (``units``), NIfTI.
        mask_path: brain mask on the field's grid (non-zero inside).
        out_path: output chi NIfTI (ppm, the field's grid and affine); ``<stem>.json`` beside it.
        method: a name or path for :func:`get_method`, an already loaded method (reuse one network
            over many subjects), or None for the default (:func:`.methods.load_default`: the
            default network under its out-of-domain guard, TV's answer when it flags).
        params: method parameters (e.g. ``{"lam": 5e-5}`` for tv, ``{"refine": 5}`` for a network).
        units: the field's units, ``ppm``, ``hz`` (needs ``b0``) or ``rad`` (needs ``b0``, ``te``).
        b0: field strength (T).
        te: echo time (s).
        voxel_size: override of the header's voxel size (mm).
        b0_dir: override of the B0 direction (voxel axes) derived from the affine.
        magnitude_path: optional magnitude image (used by methods that take ``magnitude``).
        device: ``auto``, ``cpu``, ``cuda`` or a :class:`torch.device`.
        force: overwrite existing outputs.
        residual_map: optional NIfTI path for ``M (D * chi - f)`` (ppm).
        warn: called with each warning line (default: logged); also in the sidecar.

    Returns:
        The sidecar dict that was written.

    Raises:
        QSMNetError: any user-fixable problem; no output file is written then.
    """
    import torch

    from qsmnet.io import check_output, load_nifti, save_nifti
    from qsmnet.physics import DipoleOperator

    t_start = time.perf_counter()
    check_output(out_path, force)
    if residual_map is not None:
        check_output(residual_map, force)
        if str(residual_map) == str(out_path):
            raise QSMNetError("--residual-map must differ from the output path")
    fn = load_method(DEFAULT_ALIAS if method is None else method)
    label = fn.name
    params = dict(params or {})
    fn.check_params(params)
    accepted = fn.parameters()

    inp = load_inputs(field_path, mask_path, units, b0, te, voxel_size, b0_dir)
    warnings = list(inp.warnings) + ignored_options(units, b0, te, label)
    if fn.experimental:
        warnings.append(f"{fn.kind} {label!r} is experimental: it does not beat TV on the benchmark "
                        "(see its model card); do not use its maps for decisions")  # fmt: skip
    warnings += fn.check_geometry(inp.geometry)
    for w in warnings:
        if warn is not None:
            warn(w)

    dev = resolve_device(device)
    if params.get("half") and dev.type != "cuda":
        log.info("--half needs a CUDA device; running in float32")
        params["half"] = False
    if magnitude_path is not None:
        if "magnitude" not in accepted:
            raise QSMNetError(f"method {label!r} does not use a magnitude image (try medi or ndi)")
        mag = load_nifti(magnitude_path, what="magnitude")
        _check_like(mag, inp.volume, "magnitude")
        params["magnitude"] = torch.from_numpy(np.nan_to_num(mag.data)).to(dev)
    if label == "ndi" and "phase_scale" not in params and b0 is not None and te is not None:
        from qsmnet.physics import ppm_to_rad

        params["phase_scale"] = float(ppm_to_rad(1.0, te=te, b0=b0))

    f_t = torch.from_numpy(inp.field).to(dev)
    m_t = torch.from_numpy(inp.mask).to(dev)
    t0 = time.perf_counter()
    try:
        res = fn(f_t, m_t, inp.geometry, **params)
    except torch.cuda.OutOfMemoryError:
        raise QSMNetError(
            "out of GPU memory: pass a smaller --window or --max-memory, or --device cpu"
        ) from None
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    chi, info = res.chi, res.info
    residual = res.residual
    inputs = {"field": _input_entry(field_path), "mask": _input_entry(mask_path)}
    if magnitude_path is not None:
        inputs["magnitude"] = _input_entry(magnitude_path)
    sidecar = {
        "method": label,
        "kind": fn.kind,
        "experimental": fn.experimental,
        "parameters": effective_parameters(res.params, params, magnitude_path),
        "iterations": info.get("iterations"),
        "residual": residual,
        "residual_definition": "||M (D * chi - f)|| / ||M f||, D zero-padded (linear) dipole convolution",
        "seconds": round(seconds, 4),
        "device": str(dev),
        "inputs": inputs,
        "units_in": units,
        "MagneticFieldStrength": b0,
        "EchoTime": te,
        "b0_dir": list(inp.geometry.b0_dir),
        "b0_dir_source": inp.b0_source,
        "b0_tilt_deg": round(inp.geometry.tilt_deg, 3),
        "voxel_size": list(inp.geometry.voxel_size),
        "units_out": "ppm",
        "warnings": warnings,
    }
    if "lam" in res.params:
        sidecar["lambda"] = res.params["lam"]
        sidecar["lambda_method"] = info.get("lambda_method") or (
            "auto" if params.get("lam") == "auto" else "fixed" if "lam" in params else "default")  # fmt: skip
    if info.get("residual") is not None:
        sidecar["residual_method"] = info["residual"]
    for key in ("strong_voxels", "misfit_match", "model", "inference", "half", "refine", "dc", "guard"):
        if key in info:
            sidecar[key] = info[key]
    if residual_map is not None:
        sidecar["residual_map"] = str(residual_map)
        rmap = m_t.to(torch.float32) * (DipoleOperator(inp.geometry, pad=True).to(dev).A(chi) - f_t)
    chi_np = chi.cpu().numpy()
    sidecar["wall_seconds"] = round(time.perf_counter() - t_start, 4)
    if residual_map is not None:
        save_nifti(
            residual_map,
            rmap.cpu().numpy(),
            inp.volume.affine,
            inp.volume.header,
            force=force,
            sidecar={"description": "M (D * chi - f), ppm", "chi": str(out_path), "residual": residual},
        )
    try:
        save_nifti(out_path, chi_np, inp.volume.affine, inp.volume.header, force=force, sidecar=sidecar)
    except BaseException:
        if residual_map is not None:  # never leave a residual map without its chi
            from qsmnet.io import sidecar_path

            for p in (Path(residual_map), sidecar_path(residual_map)):
                p.unlink(missing_ok=True)
        raise
    return sidecar
