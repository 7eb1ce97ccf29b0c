"""Map-style dataset of (field, mask[, chi]) NIfTI files: flat, one folder per case, or BIDS derivatives."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from qsmnet.errors import QSMNetError

from .sample import QSMSample

#: File-name suffixes (the last ``_``-separated token of the stem, lower case) for each role.
ROLE_SUFFIXES = {
    "field": ("field", "localfield", "fieldmap", "lfs", "tissuephase"),
    "mask": ("mask", "brainmask"),
    "chi": ("chi", "chimap", "qsm", "susceptibility", "truth"),
    "labels": ("labels", "dseg", "seg", "segmentation"),
}
_ENTITY_DROP = re.compile(r"^(desc|part|space|res|label)-")


def _stem(path: Path) -> str:
    name = path.name
    for s in (".nii.gz", ".nii"):
        if name.lower().endswith(s):
            return name[: -len(s)]
    return path.stem


def _role(stem: str) -> tuple[str | None, str]:
    """(role, case key part) of a file stem: ``sub-01_desc-local_fieldmap`` -> ("field", "sub-01")."""
    tokens = stem.split("_")
    last = tokens[-1].lower()
    for role, suffixes in ROLE_SUFFIXES.items():
        if last in suffixes:
            keep = [t for t in tokens[:-1] if not _ENTITY_DROP.match(t.lower())]
            return role, "_".join(keep)
    return None, stem


def find_cases(root: str | os.PathLike) -> dict[str, dict[str, Path]]:
    """Group the NIfTI files under ``root`` (recursively) into cases.

    A file's role comes from the last ``_`` token of its name (see :data:`ROLE_SUFFIXES`); its
    case is its directory plus the rest of its name, with ``desc-``/``part-``/``space-``/``res-``/
    ``label-`` entities dropped. So ``case1/field.nii.gz`` + ``case1/mask.nii.gz``,
    ``case1_field.nii.gz`` + ``case1_mask.nii.gz`` and BIDS derivatives such as
    ``sub-01/anat/sub-01_desc-local_fieldmap.nii.gz`` + ``sub-01_mask.nii.gz`` +
    ``sub-01_Chimap.nii.gz`` all pair up; ``field.nii.gz`` + ``mask.nii.gz`` directly in ``root``
    are one case named after ``root``. Cases without both a field and a mask are skipped.

    Returns:
        {case name: {role: path}}, sorted by case name.
    """
    root = Path(root)
    if not root.is_dir():
        raise QSMNetError(f"data folder {root} does not exist or is not a directory")
    cases: dict[str, dict[str, Path]] = {}
    for p in sorted(root.rglob("*.nii*")):
        if p.name.startswith(".") or not p.name.lower().endswith((".nii", ".nii.gz")):
            continue
        role, key = _role(_stem(p))
        if role is None:
            continue
        rel = p.parent.relative_to(root).as_posix()
        name = "/".join(x for x in (rel if rel != "." else "", key) if x)
        # a flat folder of one case (field.nii.gz + mask.nii.gz): the case is named after the folder
        cases.setdefault(name or root.resolve().name or "case", {}).setdefault(role, p)
    return {k: v for k, v in sorted(cases.items()) if "field" in v and "mask" in v}


class NiftiFolderDataset(Dataset):
    """(field, mask[, chi]) NIfTI cases from a folder (see :func:`find_cases` for the layouts).

    The geometry (voxel size, B0 direction in voxel axes) comes from each field's affine, so
    oblique acquisitions are handled without resampling. Fields must be in ppm unless
    ``field_units`` says otherwise.

    Args:
        root: the folder.
        field_units: "ppm", "hz" or "rad" (converted with ``b0`` and ``te``).
        b0: field strength (T) for Hz/rad fields.
        te: echo time (s) for rad fields.
        require_chi: skip cases without a chi (truth) file.

    Items are :class:`QSMSample` with (1, X, Y, Z) float32 tensors, ``chi`` None when absent, and
    ``meta`` with ``name``, ``path`` and, when a label file exists, ``labels`` (an (X, Y, Z)
    int64 tensor).
    """

    def __init__(self, root: str | os.PathLike, field_units: str = "ppm", b0: float | None = None,
                 te: float | None = None, require_chi: bool = False):
        self.root = Path(root)
        self.cases = find_cases(self.root)
        if require_chi:
            self.cases = {k: v for k, v in self.cases.items() if "chi" in v}
        if not self.cases:
            raise QSMNetError(f"no (field, mask) NIfTI pairs found under {self.root}")
        self.names = list(self.cases)
        self.field_units, self.b0, self.te = field_units, b0, te

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> QSMSample:
        from qsmnet.io import load_nifti
        from qsmnet.physics import to_ppm

        name = self.names[idx]
        files = self.cases[name]
        f = load_nifti(files["field"], what="field")
        if f.data.ndim != 3:
            raise QSMNetError(f"field file {f.path} has shape {f.data.shape}; a 3D local field is needed")
        data = {"field": to_ppm(f.data, self.field_units, b0=self.b0, te=self.te)}
        for role in ("mask", "chi", "labels"):
            if role in files:
                v = load_nifti(files[role], what=role)
                if v.data.shape[:3] != f.data.shape[:3]:
                    raise QSMNetError(
                        f"{role} file {v.path} has shape {v.data.shape}, field has {f.data.shape}")
                data[role] = v.data.reshape(f.data.shape)
        mask = (data["mask"] > 0).astype(np.float32)

        def t(a):
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]

        meta = {"name": name, "path": str(files["field"])}
        if "labels" in data:
            meta["labels"] = torch.from_numpy(np.rint(data["labels"]).astype(np.int64))
        return QSMSample(
            field=t(data["field"] * mask),
            mask=t(mask),
            geometry=(f.geometry,),
            chi=t(data["chi"]) if "chi" in data else None,
            meta=meta,
        )
