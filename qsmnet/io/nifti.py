"""NIfTI read/write with one-line user errors, atomic writes and JSON sidecars.

Reading returns float32 data (after the header's scl_slope/scl_inter scaling) and the affine that
nibabel deems best (sform when coded, else qform). Writing is atomic: the image goes to a hidden
temporary file in the destination directory and is moved into place with :func:`os.replace`, so a
failure (full disk, interrupt, exception) never leaves a partial file and never touches an existing
one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _nifti_suffix(path: str | os.PathLike) -> str | None:
    name = Path(path).name.lower()
    for s in _NIFTI_SUFFIXES:
        if name.endswith(s) and len(name) > len(s):
            return s
    return None


def _stem(path: str | os.PathLike) -> str:
    """File name without its .nii/.nii.gz (or last) extension."""
    p = Path(path)
    s = _nifti_suffix(p)
    return p.name[: -len(s)] if s else p.stem


@dataclass
class NiftiVolume:
    """A loaded NIfTI image.

    Attributes:
        data: (X, Y, Z) or (X, Y, Z, ...) float32 array, the stored values after scaling, in
            nibabel voxel order (i, j, k).
        affine: (4, 4) float64 voxel-to-world (RAS+, mm) matrix.
        header: the nibabel header (pass it to :func:`save_nifti` to keep sform/qform codes).
        path: where it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    header: Any
    path: Path

    @property
    def geometry(self) -> Geometry:
        """Grid shape, voxel size (mm) and B0 direction in voxel axes, from the affine."""
        return Geometry.from_affine(self.affine, self.data.shape[:3])


def load_nifti(path: str | os.PathLike, *, what: str = "field") -> NiftiVolume:
    """Read a .nii or .nii.gz file.

    Args:
        path: the file.
        what: what the file is meant to be ("field", "mask", "chi"...), used in error messages.

    Returns:
        A :class:`NiftiVolume` with float32 data.

    Raises:
        QSMNetError: one line naming the file and ``what``, when it does not exist, is not a NIfTI
            file, is corrupt or truncated, or holds fewer than 3 dimensions or complex values.
    """
    import nibabel as nib

    p = Path(path)
    label = f"{what} file {p}"
    if not p.exists():
        raise QSMNetError(f"{label} does not exist")
    if p.is_dir():
        raise QSMNetError(f"{label} is a directory, not a NIfTI file")
    if _nifti_suffix(p) is None:
        raise QSMNetError(f"{label} is not a NIfTI file (expected a .nii or .nii.gz name)")
    try:
        img = nib.load(str(p))
    except nib.filebasedimages.ImageFileError:
        raise QSMNetError(f"{label} is not a NIfTI file") from None
    except Exception as e:  # nibabel raises many kinds for broken headers
        raise QSMNetError(f"{label} is corrupt or truncated: {_reason(e)}") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise QSMNetError(f"{label} is not a NIfTI file")
    if np.iscomplexobj(np.empty(0, dtype=img.get_data_dtype())):
        raise QSMNetError(f"{label} holds complex values; split it into magnitude and phase")
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as e:  # EOFError, zlib.error, OSError, ValueError for short or bad data
        raise QSMNetError(f"{label} is corrupt or truncated: {_reason(e)}") from None
    if data.ndim < 3:
        raise QSMNetError(f"{label} has {data.ndim} dimension(s); a 3D volume is needed")
    return NiftiVolume(data=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header, path=p)


def _reason(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def check_output(path: str | os.PathLike, force: bool = False) -> Path:
    """Validate an output path before any computation, so a long run cannot fail at the end.

    Raises:
        QSMNetError: the name does not end in .nii/.nii.gz, its directory does not exist or is not
            writable, the path is a directory, or the file exists and ``force`` is False.

    Returns:
        The path as a :class:`Path`.
    """
    p = Path(path)
    if _nifti_suffix(p) is None:
        raise QSMNetError(f"output {p} must be named .nii or .nii.gz")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise QSMNetError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise QSMNetError(f"output directory {parent} is not writable")
    if p.is_dir():
        raise QSMNetError(f"output {p} is a directory")
    if p.exists() and not force:
        raise QSMNetError(f"output {p} already exists (use --force to overwrite)")
    return p


def sidecar_path(nifti_path: str | os.PathLike) -> Path:
    """The JSON sidecar beside a NIfTI file: ``dir/<stem>.json`` (``x.nii.gz`` -> ``x.json``)."""
    p = Path(nifti_path)
    return p.with_name(_stem(p) + ".json")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then move it onto ``path``."""
    suffix = _nifti_suffix(path) or path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                               suffix=f".tmp{suffix}")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "tolist"):  # torch tensors
        return o.tolist()
    return str(o)


def write_sidecar(nifti_path: str | os.PathLike, info: dict, force: bool = False) -> Path:
    """Write ``info`` plus ``qsmnet_version`` and ``created_utc`` (ISO 8601) as the JSON sidecar
    of ``nifti_path``, atomically.

    Raises:
        QSMNetError: the sidecar exists and ``force`` is False, or its directory does not exist.

    Returns:
        The sidecar path.
    """
    from qsmnet import __version__

    sp = sidecar_path(nifti_path)
    if not sp.parent.is_dir():
        raise QSMNetError(f"output directory {sp.parent} does not exist")
    if sp.exists() and not force:
        raise QSMNetError(f"sidecar {sp} already exists (use --force to overwrite)")
    content = dict(info)
    content["qsmnet_version"] = __version__
    content["created_utc"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = json.dumps(content, indent=2, default=_json_default, allow_nan=True) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(sp, write)
    return sp


def save_nifti(
    path: str | os.PathLike,
    data,
    affine,
    header=None,
    *,
    force: bool = False,
    sidecar: dict | None = None,
) -> Path:
    """Write ``data`` as a float32 NIfTI file, atomically.

    Args:
        path: output .nii or .nii.gz file.
        data: (X, Y, Z) or (X, Y, Z, ...) numpy array or torch tensor (any device), in ppm unless
            the caller documents otherwise; a leading (1, 1) or (1,) batch/channel axis is removed.
        affine: (4, 4) voxel-to-world matrix, written to both sform and qform.
        header: reference header (e.g. ``load_nifti(...).header``); its sform/qform codes, dim_info
            and spatial units are kept; scaling and display range are reset. None: codes 'aligned'.
        force: overwrite an existing file (and sidecar).
        sidecar: if given, also write ``<stem>.json`` with this dict (see :func:`write_sidecar`).

    Returns:
        The path written.

    Raises:
        QSMNetError: see :func:`check_output`; or data and affine of the wrong shape.
    """
    import nibabel as nib

    p = check_output(path, force)
    if sidecar is not None:
        sp = sidecar_path(p)
        if sp.exists() and not force:
            raise QSMNetError(f"sidecar {sp} already exists (use --force to overwrite)")
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data, dtype=np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim < 3:
        raise QSMNetError(f"cannot save {p}: data has shape {arr.shape}, a 3D volume is needed")
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4):
        raise QSMNetError(f"cannot save {p}: affine has shape {aff.shape}, expected (4, 4)")

    img_cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    if header is not None:
        hdr = img_cls.header_class.from_header(header)
        scode = int(header.get_sform(coded=True)[1] or 0) if hasattr(header, "get_sform") else 0
        qcode = int(header.get_qform(coded=True)[1] or 0) if hasattr(header, "get_qform") else 0
    else:
        hdr = img_cls.header_class()
        scode = qcode = 0
    hdr.set_data_dtype(np.float32)
    img = img_cls(arr, aff, header=hdr)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"] = 0.0
    img.header["cal_max"] = 0.0
    img.header["descrip"] = b"qsmnet"
    img.header.set_xyzt_units(xyz="mm")
    img.set_sform(aff, code=scode or 2)  # 2 = aligned (to an anatomical scan)
    img.set_qform(aff, code=qcode or scode or 2)
    _atomic_write(p, lambda tmp: nib.save(img, tmp))
    if sidecar is not None:
        write_sidecar(p, sidecar, force=True)
    return p
