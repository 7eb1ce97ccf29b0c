"""The fixed, seeded benchmark set and the NIfTI writer behind ``qsmnet simulate``.

Cases (16): 2 brain phantoms x {axial, 30-degree oblique B0} x {1 mm isotropic, 1x1x2 mm} x
{low, high noise}, named like ``brain1_oblique30_1x1x2_noise-high``. Each brain is generated once
on a 96 x 112 x 96 grid at 1 mm ("small brain", fitted to the field of view); the 1x1x2 mm
version averages pairs of slices (chi and mask; labels from the even slices). The field is
simulated on each case's own grid with the dipole model in float64 (zero-padded), plus Gaussian
noise of std ``NOISE_PPM[level]``; low and high noise share one noise pattern (scaled). An
oblique B0 is written as a rotated affine, so ``b0_dir_from_affine(affine)`` recovers it.

This module imports :mod:`qsmnet.io` (lazily) to write files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from qsmnet.physics import Geometry

from .forward import simulate
from .textures import rotation_between

BENCHMARK_SEED = 20240601
BENCHMARK_SHAPE = (96, 112, 96)
N_BRAINS = 2
ORIENTATIONS = {"axial": (0.0, 0.0, 1.0),
                "oblique30": (0.0, math.sin(math.radians(30.0)), math.cos(math.radians(30.0)))}
VOXELS = {"1mm": (1.0, 1.0, 1.0), "1x1x2": (1.0, 1.0, 2.0)}
#: Noise std (ppm) per level (the field's std inside these brains' masks is about 0.007 ppm, so
#: roughly SNR 14 and 3.5).
NOISE_PPM = {"low": 0.0005, "high": 0.002}


def geometry_affine(geometry: Geometry) -> np.ndarray:
    """A NIfTI affine for ``geometry``: voxel sizes on the diagonal, rotated so that world z (the
    scanner's B0) is ``geometry.b0_dir`` in voxel axes, volume centre at the world origin."""
    r = rotation_between(geometry.b0_dir, (0.0, 0.0, 1.0))
    a = np.eye(4)
    a[:3, :3] = r @ np.diag(geometry.voxel_size)
    a[:3, 3] = -a[:3, :3] @ ((np.asarray(geometry.shape) - 1) / 2.0)
    return a


def data_sha256(x) -> str:
    """SHA-256 of an array's float32 bytes (C order): the bit-identity check of the benchmark."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def write_case(out_dir, arrays: dict, geometry: Geometry, info: dict, force: bool = False) -> dict:
    """Write ``arrays`` ({"chi", "field", "mask", "labels", ...}: (X, Y, Z) or (E, X, Y, Z)) as
    ``out_dir/<name>.nii.gz`` with JSON sidecars. Returns {name: file name}."""
    from qsmnet.io import save_nifti

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = geometry_affine(geometry)
    units = {"chi": "ppm", "field": "ppm", "mask": "1", "labels": "label", "phase": "rad",
             "magnitude": "a.u."}
    files = {}
    for name, arr in arrays.items():
        if arr is None:
            continue
        a = arr.detach().cpu().numpy() if isinstance(arr, torch.Tensor) else np.asarray(arr)
        if a.ndim == 4:  # (E, X, Y, Z) -> (X, Y, Z, E)
            a = np.moveaxis(a, 0, -1)
        side = {"Units": units.get(name, ""), "Quantity": name, "VoxelSize_mm": list(geometry.voxel_size),
                "B0Dir_voxel": list(geometry.b0_dir), "B0Dir_world": [0.0, 0.0, 1.0], **info}
        save_nifti(out / f"{name}.nii.gz", a.astype(np.float32), affine, force=force, sidecar=side)
        files[name] = f"{name}.nii.gz"
    return files


def _downsample_z(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[2] // f * f
    return x[..., :n].reshape(x.shape[0], x.shape[1], n // f, f).to(torch.float64).mean(-1).to(torch.float32)


def benchmark_cases(n_brains: int = N_BRAINS) -> list[dict]:
    """The case list (without data): name, brain index, orientation, voxel key, noise level."""
    out = []
    for b in range(1, n_brains + 1):
        for o in ORIENTATIONS:
            for v in VOXELS:
                for n in NOISE_PPM:
                    out.append({"name": f"brain{b}_{o}_{v}_noise-{n}", "brain": b, "orientation": o,
                                "voxel": v, "noise": n})
    return out


def make_benchmark(out_dir: str | os.PathLike, force: bool = False, progress=None, *,
                   shape: tuple[int, int, int] = BENCHMARK_SHAPE, n_brains: int = N_BRAINS) -> Path:
    """Generate the fixed benchmark set in ``out_dir`` (see the module docstring).

    Writes ``out_dir/<case>/{chi,field,mask,labels}.nii.gz`` (float32, ppm) with sidecars and
    ``out_dir/cases.json``: {"seed", "cases": {name: {"files", "geometry", "noise_std_ppm",
    "brain", "orientation", "voxel", "sha256"}}}. Regenerating gives bit-identical data (the
    ``sha256`` of each array's float32 bytes) on the same platform.

    Args:
        out_dir: destination folder (created).
        force: overwrite existing files.
        progress: optional callable taking a message string.
        shape: 1 mm grid (tests use a tiny one; the benchmark is defined by the default).
        n_brains: number of brains (the benchmark is defined by the default).

    Returns:
        The path of ``cases.json``.
    """
    from .brain import brain_phantom

    out = Path(out_dir)
    manifest_path = out / "cases.json"
    if manifest_path.exists() and not force:
        from qsmnet.errors import QSMNetError

        raise QSMNetError(f"{manifest_path} already exists (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    brains = {}
    manifest = {"seed": BENCHMARK_SEED, "shape_1mm": list(shape), "noise_ppm": NOISE_PPM,
                "cases": {}}
    for case in benchmark_cases(n_brains):
        b = case["brain"]
        if b not in brains:
            rng = np.random.default_rng([BENCHMARK_SEED, b])
            brains[b] = brain_phantom(shape, (1.0, 1.0, 1.0), rng)
        ph = brains[b]
        vs = VOXELS[case["voxel"]]
        f = int(round(vs[2]))
        chi, mask, labels = ph.chi, ph.mask, ph.labels
        if f > 1:
            mask = (_downsample_z(mask, f) >= 0.5).to(torch.float32)
            chi = _downsample_z(chi, f) * mask
            labels = labels[..., ::f][..., : mask.shape[2]] * mask.to(labels.dtype)
        geom = Geometry(tuple(chi.shape), vs, ORIENTATIONS[case["orientation"]])
        keys = [BENCHMARK_SEED, b, list(ORIENTATIONS).index(case["orientation"]),
                list(VOXELS).index(case["voxel"])]
        sim = simulate(chi, mask, geom, np.random.default_rng(keys), noise_std=NOISE_PPM[case["noise"]],
                       dtype=torch.float64)
        arrays = {"chi": chi, "field": sim.field, "mask": mask, "labels": labels}
        info = {"Phantom": "brain", "Case": case["name"], "Seed": BENCHMARK_SEED,
                "NoiseStd_ppm": NOISE_PPM[case["noise"]], "ChiReference": "CSF = 0"}
        files = write_case(out / case["name"], arrays, geom, info, force=force)
        manifest["cases"][case["name"]] = {
            "files": {k: f"{case['name']}/{v}" for k, v in files.items()},
            "geometry": {"shape": list(geom.shape), "voxel_size": list(geom.voxel_size),
                         "b0_dir": list(geom.b0_dir), "tilt_deg": round(geom.tilt_deg, 6)},
            "noise_std_ppm": NOISE_PPM[case["noise"]],
            "brain": b, "orientation": case["orientation"], "voxel": case["voxel"], "noise": case["noise"],
            "sha256": {k: data_sha256(v) for k, v in arrays.items()},
        }
        if progress:
            progress(f"wrote {case['name']}")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest_path
