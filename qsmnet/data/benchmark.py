"""Loader of the fixed benchmark set written by ``qsmnet simulate --benchmark``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from qsmnet.errors import QSMNetError

from .sample import QSMSample


def load_benchmark(root: str | os.PathLike, names: list[str] | None = None) -> list[tuple[str, QSMSample]]:
    """Load the benchmark cases listed in ``root/cases.json``.

    Args:
        root: the folder given to ``qsmnet simulate --benchmark -o``.
        names: only these cases (default: all, in manifest order).

    Returns:
        [(case name, QSMSample)], each sample with (1, X, Y, Z) float32 ``field`` (ppm), ``mask``,
        ``chi`` (ppm) and a 1-tuple geometry read from the field's affine; ``meta`` holds
        ``labels`` ((X, Y, Z) int64 tensor, ids in :data:`qsmnet.sim.brain.LABELS`),
        ``noise_std_ppm`` and the manifest entry under ``case``.
    """
    from qsmnet.io import load_nifti

    root = Path(root)
    mpath = root / "cases.json"
    if not mpath.exists():
        raise QSMNetError(f"{mpath} not found: generate the set with `qsmnet simulate --benchmark -o {root}`")
    cases = json.loads(mpath.read_text())["cases"]
    if names is not None:
        missing = [n for n in names if n not in cases]
        if missing:
            raise QSMNetError(f"unknown benchmark case(s) {missing}; see {mpath}")
        cases = {n: cases[n] for n in names}
    out = []
    for name, entry in cases.items():
        vols = {k: load_nifti(root / rel, what=k) for k, rel in entry["files"].items()}

        def t(k, vols=vols):
            return torch.from_numpy(np.ascontiguousarray(vols[k].data, dtype=np.float32))[None]

        meta = {"name": name, "noise_std_ppm": entry.get("noise_std_ppm"), "case": entry}
        if "labels" in vols:
            meta["labels"] = torch.from_numpy(np.rint(vols["labels"].data).astype(np.int64))
        out.append((name, QSMSample(field=t("field"), mask=t("mask"), geometry=(vols["field"].geometry,),
                                    chi=t("chi"), meta=meta)))
    return out
