"""BIDS-style names for derivatives (BIDS QSM: ``_Chimap`` is a susceptibility map in ppm)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .nifti import _stem

_ENTITY = re.compile(r"^[A-Za-z0-9]+-[A-Za-z0-9]+$")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def bids_name(source_path: str | os.PathLike, suffix: str = "Chimap", desc: str | None = None) -> str:
    """Derivative file name (no directory) for a map computed from ``source_path``.

    A BIDS source name (``sub-<label>`` first, ``key-value`` entities joined by ``_``, then a
    suffix) keeps its entities except ``part-`` (the derivative is neither magnitude nor phase),
    takes ``desc-<desc>`` last when given (replacing any source ``desc-``) and ends in
    ``_<suffix>.nii.gz``::

        sub-01_ses-1_part-phase_Localfield.nii.gz -> sub-01_ses-1_Chimap.nii.gz

    Any other name gets ``<stem>_<suffix>.nii.gz`` (``field.nii`` -> ``field_Chimap.nii.gz``).

    Raises:
        ValueError: ``suffix`` or ``desc`` is not alphanumeric.
    """
    if not _LABEL.match(suffix):
        raise ValueError(f"BIDS suffix must be alphanumeric, got {suffix!r}")
    if desc is not None and not _LABEL.match(desc):
        raise ValueError(f"BIDS desc label must be alphanumeric, got {desc!r}")
    stem = _stem(Path(source_path))
    parts = stem.split("_")
    if parts and _ENTITY.match(parts[-1]) is None and _LABEL.match(parts[-1]):
        entities = parts[:-1]  # the last part is the source's suffix
    else:
        entities = parts
    if entities and entities[0].startswith("sub-") and all(_ENTITY.match(e) for e in entities):
        kept = [e for e in entities if not e.startswith("part-")]
        if desc is not None:
            kept = [e for e in kept if not e.startswith("desc-")] + [f"desc-{desc}"]
        return "_".join(kept + [suffix]) + ".nii.gz"
    extra = f"_desc-{desc}" if desc is not None else ""
    return f"{stem}{extra}_{suffix}.nii.gz"
