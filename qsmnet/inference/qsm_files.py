"""Files around :func:`~qsmnet.inference.qsm.run_qsm`: echoes in, output folder out, BIDS runs.

Inputs: phase and magnitude as one 4D NIfTI (echoes last) or one 3D file per echo, all on one
grid. Phase must be radians; integer-coded phase in a scanner range (-4096..4095, 0..4095,
-2048..2047, 0..65535, -32768..32767; the first that holds the values, unsigned ones first when
no value is negative) is rescaled to [-pi, pi) with a logged message. Echo times
and field strength come from the arguments, else from the JSON sidecars beside the phase files
(``EchoTime`` in s, a list for a 4D file; ``MagneticFieldStrength`` in T).

Without a magnitude the echoes weigh equally and a mask must be given (the mask is computed from
the magnitude otherwise).

Outputs (on the phase's grid and affine) go to a hidden temporary folder beside the output folder
and are moved in only when all are written: ``chi.nii.gz``, ``localfield.nii.gz``,
``totalfield.nii.gz`` (ppm), ``mask.nii.gz`` (where chi is valid) and ``report.json``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsmnet.errors import QSMNetError

log = logging.getLogger("qsmnet.qsm")

OUTPUTS = ("chi.nii.gz", "localfield.nii.gz", "totalfield.nii.gz", "mask.nii.gz", "report.json")
#: Integer ranges of scanner-coded phase, (low, high): value v -> (v - low) / (high - low) * 2 pi - pi.
PHASE_CODES = ((-4096, 4096), (0, 4096), (-2048, 2048), (-32768, 32768), (0, 65536))
_PI_SLACK = 1e-3


def load_echoes(paths, what: str):
    """Echo volumes from one 4D file (echoes last) or one 3D file per echo.

    Returns:
        ``(data, ref)``: (E, X, Y, Z) float32 array and the first file's
        :class:`~qsmnet.io.NiftiVolume` (its affine and header are the output's).

    Raises:
        QSMNetError: unreadable files, several 4D files, 5D data, or files on different grids.
    """
    from qsmnet.io import load_nifti

    vols = [load_nifti(p, what=what) for p in paths]
    ref = vols[0]
    if len(vols) == 1:
        d = ref.data
        if d.ndim > 4 or (d.ndim == 4 and d.shape[3] < 1):
            raise QSMNetError(f"{what} file {ref.path} has shape {d.shape}; expected 3D or 4D (echoes last)")
        return (np.moveaxis(d, -1, 0) if d.ndim == 4 else d[None]).astype(np.float32), ref
    for v in vols:
        if v.data.ndim != 3:
            raise QSMNetError(
                f"{what} file {v.path} is {v.data.ndim}D; give one 4D file or one 3D file per echo"
            )
        check_grid(v, ref, what)
    return np.stack([v.data for v in vols]).astype(np.float32), ref


def check_grid(vol, ref, what: str) -> None:
    """Raise a one-line QSMNetError unless ``vol`` is on ``ref``'s grid (shape and affine)."""
    if vol.data.shape[:3] != ref.data.shape[:3]:
        raise QSMNetError(f"{what} {vol.path} has grid {vol.data.shape[:3]}, the phase {ref.data.shape[:3]}")
    if not np.allclose(vol.affine, ref.affine, atol=1e-4):
        raise QSMNetError(f"{what} {vol.path} is not on the phase's grid (its affine differs)")


def rescale_phase(data: np.ndarray, label: str = "phase") -> np.ndarray:
    """Phase in radians: returned as is when within [-pi, pi]; integer scanner codes rescaled.

    Raises:
        QSMNetError: non-integer values outside [-pi, pi], or integers in no known range.
    """
    finite = data[np.isfinite(data)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if lo >= -np.pi - _PI_SLACK and hi <= np.pi + _PI_SLACK:
        return np.clip(data, -np.pi, np.pi)
    if not np.allclose(finite, np.round(finite)):
        raise QSMNetError(f"{label} values span [{lo:.4g}, {hi:.4g}]: expected wrapped radians in [-pi, pi] "
                          "or integer scanner codes")  # fmt: skip
    for a, b in sorted(PHASE_CODES, key=lambda c: (c[0] < 0) == (lo >= 0)):  # unsigned first if lo >= 0
        if lo >= a and hi < b:
            log.warning("%s: integer values in [%g, %g] read as codes %d..%d, rescaled to [-pi, pi)",
                        label, lo, hi, a, b - 1)  # fmt: skip
            return ((data - a) / (b - a) * 2 * np.pi - np.pi).astype(np.float32)
    raise QSMNetError(
        f"{label} integer values span [{lo:g}, {hi:g}], no known phase coding; convert to radians"
    )


def _sidecar(path: Path) -> dict:
    from qsmnet.io import sidecar_path

    sp = sidecar_path(path)
    if not sp.is_file():
        return {}
    try:
        return json.loads(sp.read_text())
    except ValueError as e:
        raise QSMNetError(f"sidecar {sp} is not valid JSON: {e}") from None


def echo_times(phase_paths, te=None) -> list[float]:
    """Echo times (s): ``te`` when given, else the sidecars' ``EchoTime`` (one per file or a list)."""
    if te:
        return [float(t) for t in te]
    out: list[float] = []
    for p in phase_paths:
        v = _sidecar(Path(p)).get("EchoTime")
        if v is None:
            raise QSMNetError(f"no echo times: pass --te T1 T2 ... (s) or add EchoTime to the sidecar of {p}")
        out += [float(x) for x in (v if isinstance(v, list) else [v])]
    return out


def field_strength(phase_paths, b0=None) -> float:
    """Field strength (T): ``b0`` when given, else the first sidecar's ``MagneticFieldStrength``."""
    if b0:
        return float(b0)
    v = _sidecar(Path(phase_paths[0])).get("MagneticFieldStrength")
    if v is None:
        raise QSMNetError(
            "no field strength: pass --b0 TESLA or add MagneticFieldStrength to the phase sidecar"
        )
    return float(v)


def prepare_output(out_dir, force: bool) -> Path:
    """Check the output folder before any work: its parent exists, no output there unless ``force``."""
    out = Path(out_dir)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise QSMNetError(f"the folder {parent} for the output {out} does not exist")
    if out.exists() and not out.is_dir():
        raise QSMNetError(f"output {out} exists and is not a folder")
    if out.is_dir() and not force:
        present = [n for n in OUTPUTS if (out / n).exists()]
        if present:
            raise QSMNetError(f"{out} already holds {', '.join(present)} (use --force to overwrite)")
    return out


def write_outputs(out_dir, result, ref, force: bool = False) -> Path:
    """Write a :class:`~qsmnet.inference.qsm.QSMResult` into ``out_dir`` all at once (see module doc)."""
    from qsmnet.io import save_nifti
    from qsmnet.io.nifti import _json_default

    out = prepare_output(out_dir, force)
    parent = out.parent if str(out.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    try:
        maps = {"chi": result.chi, "localfield": result.local_field, "totalfield": result.total_field,
                "mask": result.mask.to(dtype=result.chi.dtype)}  # fmt: skip
        for name, data in maps.items():
            save_nifti(tmp / f"{name}.nii.gz", data, ref.affine, ref.header)
        (tmp / "report.json").write_text(json.dumps(result.report, indent=2, default=_json_default) + "\n")
        if not out.exists():
            os.replace(tmp, out)
            os.chmod(out, 0o777 & ~_umask())
            return out
        for name in OUTPUTS:
            os.replace(tmp / name, out / name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _umask() -> int:
    u = os.umask(0)
    os.umask(u)
    return u


@dataclass(frozen=True)
class Run:
    """One multi-echo acquisition of a BIDS folder: phase and magnitude files (by echo), output folder."""

    phase: tuple[Path, ...]
    magnitude: tuple[Path, ...]
    out: Path


_ECHO = re.compile(r"_echo-(\d+)")


def find_megre_runs(root) -> list[Run]:
    """MEGRE runs of a BIDS folder: ``sub-*/[ses-*/]anat/*_part-phase[_...]_MEGRE.nii[.gz]``.

    Echoes of one run share every entity but ``echo-``; the magnitude has ``part-mag``. Outputs go
    to ``<root>/derivatives/qsmnet/<sub/ses/anat>/<run name without echo-, part-, suffix>/``.

    Raises:
        QSMNetError: no such folder or no MEGRE phase in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise QSMNetError(f"BIDS folder {root} does not exist")
    deriv = root / "derivatives"
    groups: dict[tuple, list[tuple[int, Path]]] = {}
    for f in sorted(root.rglob("sub-*/**/*_part-phase*_MEGRE.nii*")):
        if deriv in f.parents or not f.name.endswith((".nii", ".nii.gz")):
            continue
        m = _ECHO.search(f.name)
        key = (f.parent, _ECHO.sub("", f.name).split(".nii")[0])
        groups.setdefault(key, []).append((int(m.group(1)) if m else 0, f))
    runs = []
    for (folder, stem), files in sorted(groups.items()):
        files.sort()
        phase = tuple(p for _, p in files)
        mag = tuple(p.with_name(p.name.replace("_part-phase", "_part-mag")) for p in phase)
        name = "_".join(e for e in stem.split("_") if not e.startswith("part-") and e != "MEGRE")
        runs.append(Run(phase, mag if all(p.exists() for p in mag) else (),
                        deriv / "qsmnet" / folder.relative_to(root) / name))  # fmt: skip
    if not runs:
        raise QSMNetError(f"no *_part-phase_MEGRE.nii[.gz] under a sub-* folder of {root}")
    return runs


def qsm_files(
    phase_paths, magnitude_paths, out_dir, *, mask_path=None, te=None, b0=None, force=False, **kwargs
) -> dict:
    """Read the inputs, run :func:`~qsmnet.inference.qsm.run_qsm`, write the outputs; return the report.

    Args:
        phase_paths: one 4D phase file or one 3D file per echo (radians or integer codes).
        magnitude_paths: the same layout, or empty/None (then ``mask_path`` is required).
        out_dir: output folder (created; see the module docstring).
        mask_path: optional brain mask on the phase's grid.
        te: echo times (s), else from the sidecars.
        b0: field strength (T), else from the sidecar.
        force: overwrite outputs in an existing folder.
        **kwargs: passed to ``run_qsm`` (unwrap, bfr, method, method_params, bfr_params, device...).

    Raises:
        QSMNetError: any input problem (see ``run_qsm`` and the module docstring); nothing is written.
    """
    from qsmnet.io import load_nifti

    from .qsm import run_qsm

    prepare_output(out_dir, force)
    phase_paths = [Path(p) for p in phase_paths]
    phase, ref = load_echoes(phase_paths, "phase")
    tes = echo_times(phase_paths, te)
    if len(phase_paths) == 1 and ref.data.ndim == 3 and len(tes) > 1:
        raise QSMNetError(f"phase {ref.path} is a single 3D volume but {len(tes)} echo times were given; "
                          "give a 4D file (echoes last) or one file per echo")  # fmt: skip
    phase = rescale_phase(phase)
    mag = None
    if magnitude_paths:
        mag, mref = load_echoes([Path(p) for p in magnitude_paths], "magnitude")
        check_grid(mref, ref, "magnitude")
        if mag.shape[0] != phase.shape[0]:
            raise QSMNetError(f"{phase.shape[0]} phase echo(es) but {mag.shape[0]} magnitude echo(es)")
    elif mask_path is None:
        raise QSMNetError("no magnitude given: pass --mag (or --mask, then echoes weigh equally)")
    mask = None
    if mask_path is not None:
        mv = load_nifti(mask_path, what="mask")
        if mv.data.ndim != 3:
            raise QSMNetError(f"mask {mv.path} is {mv.data.ndim}D; a 3D mask is needed")
        check_grid(mv, ref, "mask")
        mask = mv.data != 0
    result = run_qsm(phase, mag, tes, field_strength(phase_paths, b0), ref.geometry, mask=mask, **kwargs)
    result.report["files"] = {"phase": [str(p) for p in phase_paths],
                              "magnitude": [str(p) for p in magnitude_paths or []],
                              "mask": str(mask_path) if mask_path else None}  # fmt: skip
    write_outputs(out_dir, result, ref, force)
    return result.report
