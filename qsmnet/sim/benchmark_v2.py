"""Benchmark v2: the v1 set plus real-size heads whose local fields come from a multi-echo fit and
a background-field removal, with pathology and the geometries of clinical and 7 T protocols.

Tiers (case names, one folder each, one ``cases.json`` at the root):

- ``clean``: the 16 v1 cases (:func:`qsmnet.sim.benchmark.make_benchmark`), in ``clean/``,
  bit-identical to v1.
- ``realistic``: 2 whole heads at 1 mm (192 x 224 x 192, seeds ``[BENCHMARK_V2_SEED, h]``) with
  WM anisotropy and the hollow-cylinder offset, the tissue settings of
  :data:`qsmnet.sim.head.REAL_FIELD_PROFILE` (``profile="real-field"``, the default; docs/realism.md);
  total field of the whole head in air, 5-echo acquisition (4-24 ms, 3 T, SNR
  :data:`~qsmnet.sim.head.REAL_FIELD_SNR`), ideal echo fit, ``bfr`` -> local field;
  geometries ``axial_1mm``, ``oblique45_1mm`` and ``axial_1x1x2`` (complex averaging of 1 mm
  slice pairs). 6 cases ``head{1,2}_{...}``.
- ``pathology``: one head with 2 haemorrhages (+0.5..+1.5 ppm) and its calcifications and
  microbleeds, ``axial_1mm`` and ``oblique30_1mm``.
- ``hires``: a 0.6 mm crop (160^3 voxels, 96 mm, centred on the basal ganglia); the crop holds no
  air cavities, so its field is the local field of the brain in the crop (non-dipolar parts
  included) plus the echo-fit noise, without background removal.

Each case holds ``chi`` (the scalar mean chi of the brain, ppm, CSF = 0), ``field`` (ppm, in the
mask), ``mask`` (the brain mask eroded by the background removal), ``labels`` (see
:data:`qsmnet.sim.head.HEAD_LABELS`), cropped to the brain's bounding box + 6 voxels. The
manifest adds per case: tier, geometry, ``noise_std_ppm`` (std of the echo-fit noise in the
mask), ``unexplained`` (``||f - D chi|| / ||f||`` in the mask, demeaned) and SHA-256s.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from qsmnet.physics import Geometry, forward_field

from .acquire import (
    DEFAULT_SNR,
    DEFAULT_TE,
    HEAD_PROFILES,
    OBLIQUE_BANDLIMIT,
    acquire,
    block_mean,
    head_fields,
)
from .benchmark import data_sha256, make_benchmark, write_case
from .head import head_phantom

BENCHMARK_V2_SEED = 20261202
SNR = DEFAULT_SNR  # the generator profile's SNR (the set before session 20)
#: Head settings of the set (a key of :data:`qsmnet.sim.acquire.HEAD_PROFILES`).
PROFILE = "real-field"
HEAD_SHAPE = (192, 224, 192)
TILTS = {"axial": 0.0, "oblique20": 20.0, "oblique30": 30.0, "oblique45": 45.0}
#: (phantom, orientation, voxel key) per case of the realistic and pathology tiers.
HEAD_CASES = {
    "realistic": [
        (f"head{h}", o, v)
        for h in (1, 2)
        for o, v in (("axial", "1mm"), ("oblique45", "1mm"), ("axial", "1x1x2"))
    ],
    "pathology": [("path1", o, "1mm") for o in ("axial", "oblique30")],
}
FACTORS = {"1mm": (1, 1, 1), "1x1x2": (1, 1, 2)}

Bfr = Callable[[torch.Tensor, torch.Tensor, tuple], tuple[torch.Tensor, torch.Tensor]]


def _b0(tilt_deg: float) -> tuple[float, float, float]:
    t = math.radians(tilt_deg)
    return (0.0, math.sin(t), math.cos(t))


def unexplained_fraction(field, chi, mask, geometry: Geometry) -> float:
    """``||f - D chi|| / ||f||`` inside ``mask`` (both demeaned there), float64."""
    m = mask > 0
    d = forward_field(chi.double(), geometry.voxel_size, geometry.b0_dir, pad=True, dtype=torch.float64)
    f = (field.double() - field.double()[m].mean()) * m
    d = (d - d[m].mean()) * m
    return float((f - d).norm() / f.norm())


def _crop_box(mask: torch.Tensor, margin: int = 6) -> tuple[slice, ...]:
    idx = mask.nonzero()
    lo, hi = idx.min(0).values, idx.max(0).values
    return tuple(
        slice(max(0, int(a) - margin), min(n, int(b) + margin + 1))
        for a, b, n in zip(lo, hi, mask.shape, strict=True)
    )


def _labels_down(labels: torch.Tensor, f) -> torch.Tensor:
    return labels[:: f[0], :: f[1], :: f[2]][
        : labels.shape[0] // f[0], : labels.shape[1] // f[1], : labels.shape[2] // f[2]
    ]


def _head_case(ph, vs_fine, phantom_seed, orientation, voxel, bfr: Bfr, rng,
               snr: float = SNR) -> tuple[dict, Geometry, dict]:
    f = FACTORS.get(voxel, (1, 1, 1))
    b0 = _b0(TILTS[orientation])
    oblique = TILTS[orientation] != 0.0  # band-limit the air edge's source (docs/realism.md)
    bandlimit = OBLIQUE_BANDLIMIT if oblique else None
    total, local = head_fields(ph, vs_fine, b0, bandlimit=bandlimit, dtype=torch.float64)
    acq = acquire(total.float(), ph.m0, ph.r2star, vs_fine, rng, snr=snr, factors=f)
    vs = tuple(v * k for v, k in zip(vs_fine, f, strict=True))
    brain = (block_mean(ph.mask, f) >= 0.5).float()
    chi = block_mean(ph.brain_chi, f) * brain
    labels = _labels_down(ph.labels, f)
    if voxel == "0.6mm":
        fld = (block_mean(local.float(), f) + acq.noise_ppm) * brain
        mask = brain
    else:
        fld, mask = bfr(acq.field, brain, vs)
        fld, mask = fld.float(), (mask > 0).float()
    box = _crop_box(mask)
    arrays = {
        "chi": chi[box].contiguous(),
        "field": (fld * mask)[box].contiguous(),
        "mask": mask[box].contiguous(),
        "labels": (labels * (brain > 0))[box].contiguous(),
    }
    geom = Geometry(tuple(arrays["chi"].shape), vs, b0)
    m = arrays["mask"] > 0
    noise = acq.noise_ppm[box][m]
    extra = {
        "noise_std_ppm": float(noise.std()),
        "snr": snr,
        "te_s": list(DEFAULT_TE),
        "unexplained": unexplained_fraction(arrays["field"], arrays["chi"], arrays["mask"], geom),
        "phantom_seed": phantom_seed,
    }
    return arrays, geom, extra


def make_benchmark_v2(
    out_dir: str | os.PathLike,
    bfr: Bfr,
    force: bool = False,
    progress=None,
    *,
    head_shape: tuple[int, int, int] = HEAD_SHAPE,
    hires_shape=(160, 160, 160),
    head_mm: float = 1.0,
    hires_mm: float = 0.6,
    tiers=("clean", "realistic", "pathology", "hires"),
    profile: str = PROFILE,
    snr: float | None = None,
) -> Path:
    """Write benchmark v2 to ``out_dir`` (see the module docstring); returns ``cases.json``.

    Args:
        out_dir: destination folder.
        bfr: background-field removal ``bfr(total_ppm, mask, voxel_size) -> (local, mask)``.
        force: overwrite.
        progress: optional callable taking a message.
        head_shape, hires_shape, head_mm, hires_mm: grids and their voxel sizes (tests use small,
            coarse ones; the set is defined by the defaults).
        tiers: which tiers to write (the set is defined by all four).
        profile: the heads' settings, a key of :data:`qsmnet.sim.acquire.HEAD_PROFILES`:
            ``"real-field"`` (the set; :data:`~qsmnet.sim.head.REAL_FIELD_PROFILE`) or
            ``"generator"`` (the generator's defaults: the set before session 20).
        snr: SNR of the heads' acquisitions; None: the profile's.
    """
    from qsmnet.errors import QSMNetError

    if profile not in HEAD_PROFILES:
        raise QSMNetError(f"unknown head profile {profile!r} (choose from {', '.join(HEAD_PROFILES)})")
    out = Path(out_dir)
    mpath = out / "cases.json"
    if mpath.exists() and not force:
        raise QSMNetError(f"{mpath} already exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    profile_name = profile
    profile, profile_snr = HEAD_PROFILES[profile_name]
    snr = profile_snr if snr is None else float(snr)
    manifest = {
        "version": 2,
        "seed": BENCHMARK_V2_SEED,
        "snr": snr,
        "profile": profile_name,
        "profile_settings": json.loads(json.dumps(profile)),
        "cases": {},
    }
    say = progress or (lambda m: None)
    if "clean" in tiers:
        v1 = json.loads(make_benchmark(out / "clean", force=force).read_text())
        for name, e in v1["cases"].items():
            e["files"] = {k: f"clean/{v}" for k, v in e["files"].items()}
            manifest["cases"][f"clean_{name}"] = {**e, "tier": "clean"}
        say("wrote the clean tier (v1)")
    vs1 = (float(head_mm),) * 3
    for tier in ("realistic", "pathology"):
        if tier not in tiers:
            continue
        phantoms = {}
        for pname, orientation, voxel in HEAD_CASES[tier]:
            if pname not in phantoms:
                idx = int(pname[-1]) + (10 if tier == "pathology" else 0)
                phantoms[pname] = (
                    head_phantom(
                        head_shape,
                        vs1,
                        np.random.default_rng([BENCHMARK_V2_SEED, idx]),
                        haemorrhages=2 if tier == "pathology" else 0,
                        **profile,
                    ),
                    idx,
                )
            ph, idx = phantoms[pname]
            rng = np.random.default_rng(
                [BENCHMARK_V2_SEED, idx, list(TILTS).index(orientation), list(FACTORS).index(voxel)]
            )
            name = f"{pname}_{orientation}_{voxel}"
            arrays, geom, extra = _head_case(ph, vs1, [BENCHMARK_V2_SEED, idx], orientation, voxel, bfr, rng,
                                             snr)
            _record(manifest, out, name, tier, arrays, geom, extra, force)
            say(f"wrote {name} (unexplained {100 * extra['unexplained']:.1f} %)")
    if "hires" in tiers:
        vsh = (float(hires_mm),) * 3
        ph = head_phantom(
            hires_shape, vsh, np.random.default_rng([BENCHMARK_V2_SEED, 20]), centre_mni=(0.0, -10.0, 5.0),
            **profile,
        )
        arrays, geom, extra = _head_case(
            ph,
            vsh,
            [BENCHMARK_V2_SEED, 20],
            "axial",
            "0.6mm",
            bfr,
            np.random.default_rng([BENCHMARK_V2_SEED, 20, 1]),
            snr,
        )
        _record(manifest, out, "crop1_axial_0.6mm", "hires", arrays, geom, extra, force)
        say(f"wrote crop1_axial_0.6mm (unexplained {100 * extra['unexplained']:.1f} %)")
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    return mpath


def _record(manifest, out, name, tier, arrays, geom, extra, force):
    info = {
        "Phantom": "head",
        "Case": name,
        "Tier": tier,
        "Seed": BENCHMARK_V2_SEED,
        "NoiseStd_ppm": extra["noise_std_ppm"],
        "ChiReference": "CSF = 0 (scalar mean chi)",
    }
    files = write_case(out / name, arrays, geom, info, force=force)
    manifest["cases"][name] = {
        "files": {k: f"{name}/{v}" for k, v in files.items()},
        "tier": tier,
        "geometry": {
            "shape": list(geom.shape),
            "voxel_size": list(geom.voxel_size),
            "b0_dir": list(geom.b0_dir),
            "tilt_deg": round(geom.tilt_deg, 6),
        },
        **extra,
        "sha256": {k: data_sha256(v) for k, v in arrays.items()},
    }
