"""Many subjects in one process: a list file or a BIDS-like folder, one loaded model, a progress bar.

A list file has one subject per line, ``FIELD MASK OUT`` (whitespace-separated; ``#`` starts a
comment; relative paths are relative to the list file's folder).

A BIDS-like folder is searched for local fields ``*_Localfield.nii[.gz]`` / ``*_localfield.nii[.gz]``
(or ``*_Fieldmap.nii[.gz]``, which must then be in ppm) under any ``sub-*`` folder, skipping
``derivatives/qsmnet``. Each needs a mask in the same folder: ``<entities>_mask.nii[.gz]`` with the
field's entities (``part-`` dropped), else the only ``*_mask.nii*`` there. Results go to
``<root>/derivatives/qsmnet/<sub-.../...>/<bids_name(field)>`` (``..._Chimap.nii.gz``).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qsmnet.errors import QSMNetError

_FIELD_SUFFIXES = ("_Localfield", "_localfield", "_Fieldmap")
_NII = (".nii.gz", ".nii")


@dataclass(frozen=True)
class Subject:
    """One reconstruction: field and mask in, chi out (all paths)."""

    field: Path
    mask: Path
    out: Path


def read_subject_list(path: str | os.PathLike) -> list[Subject]:
    """Subjects of a list file (see the module docstring).

    Raises:
        QSMNetError: missing file, a line without three paths, or no subject at all.
    """
    p = Path(path)
    if not p.is_file():
        raise QSMNetError(f"subject list {p} does not exist")
    base = p.parent
    subjects = []
    for no, line in enumerate(p.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 3:
            raise QSMNetError(f"{p}:{no}: expected 'FIELD MASK OUT', got {len(parts)} item(s)")
        subjects.append(Subject(*(base / q for q in parts)))
    if not subjects:
        raise QSMNetError(f"subject list {p} names no subject")
    return subjects


def _strip_nii(name: str) -> str | None:
    for s in _NII:
        if name.endswith(s):
            return name[: -len(s)]
    return None


def _find_mask(field: Path, stem: str) -> Path | None:
    entities = [e for e in stem.split("_")[:-1] if not e.startswith("part-")]
    for s in _NII:
        cand = field.parent / ("_".join(entities + ["mask"]) + s)
        if cand.is_file():
            return cand
    masks = sorted(
        q for q in field.parent.iterdir() if _strip_nii(q.name) and _strip_nii(q.name).endswith("_mask")
    )
    return masks[0] if len(masks) == 1 else None


def find_bids_subjects(root: str | os.PathLike) -> list[Subject]:
    """Subjects of a BIDS-like folder (see the module docstring).

    Raises:
        QSMNetError: the folder does not exist, holds no local field, or a field has no mask.
    """
    from qsmnet.io import bids_name

    root = Path(root)
    if not root.is_dir():
        raise QSMNetError(f"BIDS folder {root} does not exist")
    out_root = root / "derivatives" / "qsmnet"
    subjects = []
    for f in sorted(root.rglob("*.nii*")):
        stem = _strip_nii(f.name)
        if stem is None or not stem.endswith(_FIELD_SUFFIXES) or out_root in f.parents:
            continue
        rel = f.parent.relative_to(root).parts
        subs = [i for i, part in enumerate(rel) if part.startswith("sub-")]
        if not subs:
            continue
        mask = _find_mask(f, stem)
        if mask is None:
            raise QSMNetError(
                f"no mask for {f}: expected {'_'.join(stem.split('_')[:-1])}_mask.nii.gz beside it"
            )
        subjects.append(Subject(f, mask, out_root.joinpath(*rel[subs[0] :]) / bids_name(f)))
    if not subjects:
        raise QSMNetError(f"no *_Localfield.nii[.gz] (or *_Fieldmap) under a sub-* folder of {root}")
    return subjects


def predict_many(
    subjects: Sequence[Subject],
    method: str | Callable | None = None,
    progress: bool = True,
    make_dirs: bool = False,
    report: Callable[[str], None] | None = None,
    **kwargs,
) -> list[dict]:
    """Run :func:`~qsmnet.inference.pipeline.predict_file` on each subject with one loaded method.

    Args:
        subjects: the subjects.
        method: name, path or loaded method (None: the default method); loaded once here.
        progress: show a tqdm bar on stderr.
        make_dirs: create missing output folders (BIDS derivatives).
        report: called with one line per failed subject (default: printed on stderr).
        **kwargs: passed to ``predict_file`` (params, units, b0, te, device, force, ...).

    Returns:
        One dict per subject: ``{"subject": Subject, "sidecar": dict}`` or
        ``{"subject": Subject, "error": "one line"}``. A failing subject does not stop the others.
    """
    from tqdm import tqdm

    from .methods import DEFAULT_ALIAS, load_method
    from .pipeline import predict_file, resolve_device

    report = report or (lambda line: print(line, file=sys.stderr))
    fn = load_method(DEFAULT_ALIAS if method is None else method)
    kwargs["device"] = resolve_device(kwargs.get("device", "auto"))
    params = dict(kwargs.pop("params", None) or {})
    if params.get("half") and kwargs["device"].type != "cuda":
        logging.getLogger(__name__).info("--half needs a CUDA device; running in float32")
        params["half"] = False
    results = []
    bar = tqdm(subjects, desc="predict", unit="subject", file=sys.stderr, disable=not progress)
    for s in bar:
        try:
            if make_dirs:
                s.out.parent.mkdir(parents=True, exist_ok=True)
            side = predict_file(s.field, s.mask, s.out, method=fn, params=params, **kwargs)
            results.append({"subject": s, "sidecar": side})
        except (QSMNetError, ValueError, OSError) as e:
            line = " ".join(str(e).split()) or type(e).__name__
            report(f"qsmnet predict: {s.field}: error: {line}")
            results.append({"subject": s, "error": line})
    bar.close()
    return results
