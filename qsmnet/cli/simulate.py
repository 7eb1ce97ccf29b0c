"""``qsmnet simulate``: write a simulated phantom (chi, field, mask[, labels]) or the benchmark set."""

from __future__ import annotations

HELP = "simulate a phantom's local field (NIfTI, ppm), or write the fixed benchmark set"

#: qsmnet.sim.DEFAULT_IMPERFECTIONS' keys (not imported here, to keep --help fast; a test checks they agree)
_IMPERFECTIONS = (
    "background_residual", "nondipolar", "edge_errors", "external_background", "multi_echo", "bfr_remnant",
)


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--phantom",
        choices=("shapes", "brain", "head"),
        default="brain",
        help="phantom kind; head: a real-size head with multi-echo phase (docs/realism.md)",
    )
    parser.add_argument(
        "--shape",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="grid size in voxels: one number or three (default 96 112 96; head: 192 224 192 "
        "mm / voxel size)",
    )
    parser.add_argument(
        "--voxel-size",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="MM",
        help="voxel size in mm: one number or three (default 1)",
    )
    parser.add_argument(
        "--b0-dir",
        type=float,
        nargs=3,
        default=[0.0, 0.0, 1.0],
        metavar=("X", "Y", "Z"),
        help="B0 direction in voxel axes (default 0 0 1); written as a rotated affine",
    )
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument(
        "--snr", type=float, default=None, help="noise std = std of the noiseless field inside the mask / SNR"
    )
    noise.add_argument(
        "--noise-std", type=float, default=0.0, metavar="PPM", help="noise std in ppm (default 0)"
    )
    parser.add_argument("--b0", type=float, default=3.0, metavar="T", help="head: field strength (default 3)")
    parser.add_argument(
        "--te",
        type=float,
        nargs="+",
        default=None,
        metavar="S",
        help="head: echo times in s (default 0.004 0.009 0.014 0.019 0.024)",
    )
    parser.add_argument(
        "--tilt",
        type=float,
        default=None,
        metavar="DEG",
        help="B0 tilted by DEG about the voxel i axis (instead of --b0-dir)",
    )
    parser.add_argument("--pathology", action="store_true", help="head: add a haemorrhage")
    parser.add_argument(
        "--profile",
        choices=("generator", "real-field"),  # qsmnet.sim.acquire.HEAD_PROFILES (not imported here)
        default=None,
        help="head and --benchmark-v2: tissue settings; real-field matches a real 3 T field's spectrum "
        "and amplitude (grey minus white matter 0.048 ppm, nuclei and veins x1.5, two texture "
        "offsets, SNR 21 unless --snr; "
        "docs/realism.md). Default: generator for --phantom head, real-field for --benchmark-v2",
    )
    parser.add_argument(
        "--sim-voxel",
        type=float,
        default=1.0,
        metavar="MM",
        help="head: simulate on voxels of at most MM, then average (default 1)",
    )
    parser.add_argument(
        "--no-dephasing",
        dest="dephasing",
        action="store_false",
        help="head: no intravoxel dephasing by the field gradient (full signal next to sinuses; "
        "benchmark v2 and the training heads are made without it)",
    )
    parser.add_argument(
        "--imperfection",
        action="append",
        default=[],
        choices=_IMPERFECTIONS,
        help="add an imperfection of real data (repeatable)",
    )
    parser.add_argument(
        "--scale",
        default="fit",
        help="brain size: 'fit' (fill the field of view, at most real size) or a factor",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="write the fixed seeded benchmark set (all other options but -o are ignored)",
    )
    parser.add_argument(
        "--benchmark-v2",
        action="store_true",
        help="write benchmark v2 (clean + real-size heads, pathology, 0.6 mm; data/README.md; minutes)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _triple(values, name, kind):
    if len(values) == 1:
        values = list(values) * 3
    if len(values) != 3:
        from qsmnet.errors import QSMNetError

        raise QSMNetError(f"--{name} takes one or three numbers, got {len(values)}")
    return tuple(kind(v) for v in values)


def run(args) -> int:
    import json
    import math
    from pathlib import Path

    import numpy as np

    from qsmnet.errors import QSMNetError
    from qsmnet.physics import Geometry
    from qsmnet.sim import shapes_phantom, simulate
    from qsmnet.sim.benchmark import make_benchmark, write_case

    out = Path(args.out)
    if args.snr is not None and not (math.isfinite(args.snr) and args.snr > 0):
        raise QSMNetError(f"--snr must be a positive number, got {args.snr}")
    if args.benchmark_v2:
        from qsmnet.phase import vsharp
        from qsmnet.sim.benchmark_v2 import make_benchmark_v2

        path = make_benchmark_v2(
            out,
            vsharp,
            force=args.force,
            progress=lambda m: print(m, flush=True),
            profile=args.profile or "real-field",
            snr=args.snr,
        )
        n = len(json.loads(path.read_text())["cases"])
        print(f"benchmark v2: {n} cases, manifest {path}")
        return 0
    if args.benchmark:
        path = make_benchmark(out, force=args.force, progress=lambda m: print(m, flush=True))
        n = len(json.loads(path.read_text())["cases"])
        print(f"benchmark set: {n} cases, manifest {path}")
        return 0
    vs = _triple(args.voxel_size, "voxel-size", float)
    if args.shape is None:
        from qsmnet.sim.head import DEFAULT_HEAD_SHAPE

        shape = (
            tuple(int(round(n / v)) for n, v in zip(DEFAULT_HEAD_SHAPE, vs, strict=True))
            if args.phantom == "head"
            else (96, 112, 96)
        )
    else:
        shape = _triple(args.shape, "shape", int)
    if args.tilt is not None:
        args.b0_dir = [0.0, math.sin(math.radians(args.tilt)), math.cos(math.radians(args.tilt))]
    if min(shape) < 3 or max(shape) > 512:
        raise QSMNetError(f"--shape must be between 3 and 512 voxels per axis, got {shape}")
    if not all(math.isfinite(v) and 0 < v <= 10 for v in vs):
        raise QSMNetError(f"--voxel-size must be in (0, 10] mm, got {vs}")
    if not (math.isfinite(args.noise_std) and args.noise_std >= 0):
        raise QSMNetError(f"--noise-std must be >= 0 ppm, got {args.noise_std}")
    if args.profile is None:
        args.profile = "generator"
    if args.profile != "generator" and args.phantom != "head":
        raise QSMNetError(f"--profile {args.profile} is for --phantom head, not {args.phantom}")
    try:
        geom = Geometry(shape, vs, args.b0_dir)
    except ValueError as e:
        raise QSMNetError(f"--b0-dir: {e}") from None
    scale = args.scale
    if scale != "fit":
        try:
            scale = float(scale)
        except ValueError:
            raise QSMNetError(f"--scale must be 'fit' or a number, got {args.scale!r}") from None
        if not (math.isfinite(scale) and scale > 0):
            raise QSMNetError(f"--scale must be positive, got {scale}")
    for name in ("chi", "field", "mask", "labels"):
        if (out / f"{name}.nii.gz").exists() and not args.force:
            raise QSMNetError(f"{out / (name + '.nii.gz')} already exists (use --force to overwrite)")
    if args.phantom == "head":
        return _run_head(args, out, geom)
    rng = np.random.default_rng(args.seed)
    if args.phantom == "brain":
        from qsmnet.sim.brain import brain_phantom

        ph = brain_phantom(shape, vs, rng, scale=scale)
    else:
        ph = shapes_phantom(shape, vs, rng)
    imp = {k: True for k in args.imperfection}
    weight = (ph.info or {}).get("wm_weight")
    sim = simulate(
        ph.chi, ph.mask, geom, rng, noise_std=args.noise_std, snr=args.snr, imperfections=imp, weight=weight
    )
    arrays = {
        "chi": ph.chi,
        "field": sim.field,
        "mask": sim.mask,
        "labels": ph.labels,
        "phase": sim.phase,
        "magnitude": sim.magnitude,
    }
    info = {
        "Phantom": args.phantom,
        "Seed": args.seed,
        "NoiseStd_ppm": sim.noise_std,
        "SNR": args.snr,
        "Imperfections": sorted(imp),
        "ChiReference": "CSF = 0" if args.phantom == "brain" else "zero mean",
    }
    if sim.te:
        info.update({"EchoTime_s": list(sim.te), "MagneticFieldStrength_T": 3.0})
    files = write_case(out, arrays, geom, info, force=args.force)
    print(
        f"wrote {', '.join(files.values())} to {out} (noise std {sim.noise_std:.5f} ppm, "
        f"tilt {geom.tilt_deg:.1f} deg)"
    )
    return 0


def _run_head(args, out, geom) -> int:
    """Whole head: simulate on a grid of <= 1 mm voxels, complex-average onto the acquisition grid."""
    import json
    import math

    import numpy as np

    from qsmnet.errors import QSMNetError
    from qsmnet.sim.acquire import (
        DEFAULT_TE,
        HEAD_PROFILES,
        acquire,
        block_mean,
        head_fields,
        oblique_bandlimit,
    )
    from qsmnet.sim.benchmark import write_case
    from qsmnet.sim.head import head_phantom

    te = tuple(args.te) if args.te else DEFAULT_TE
    if not all(math.isfinite(t) and 0 < t < 1 for t in te):
        raise QSMNetError(f"--te must be echo times in seconds in (0, 1), got {list(te)}")
    if not (math.isfinite(args.b0) and args.b0 > 0):
        raise QSMNetError(f"--b0 must be a positive field strength in T, got {args.b0}")
    names = ("phase", "mag", "brainmask", "truth_chi", "truth_localfield", "totalfield")
    for n in names:
        if (out / f"{n}.nii.gz").exists() and not args.force:
            raise QSMNetError(f"{out / (n + '.nii.gz')} already exists (use --force to overwrite)")
    factors = tuple(max(1, int(round(v / args.sim_voxel))) for v in geom.voxel_size)
    fine_vs = tuple(v / f for v, f in zip(geom.voxel_size, factors, strict=True))
    fine_shape = tuple(n * f for n, f in zip(geom.shape, factors, strict=True))
    rng = np.random.default_rng(args.seed)
    profile, profile_snr = HEAD_PROFILES[args.profile]
    ph = head_phantom(fine_shape, fine_vs, rng, haemorrhages=1 if args.pathology else 0, **profile)
    # smooth the air edge's source at oblique B0 (docs/realism.md)
    total, local = head_fields(ph, fine_vs, geom.b0_dir, bandlimit=oblique_bandlimit(geom.b0_dir))
    snr = profile_snr if args.snr is None else float(args.snr)
    acq = acquire(total, ph.m0, ph.r2star, fine_vs, rng, te=te, b0=args.b0, snr=snr, factors=factors,
                  dephasing=args.dephasing)
    mask = (block_mean(ph.mask, factors) >= 0.5).float()
    m = mask > 0
    loc = block_mean(local, factors)
    loc = (loc - loc[m].mean()) * mask
    tot = block_mean(total, factors)
    arrays = {
        "phase": acq.phase,
        "mag": acq.magnitude,
        "brainmask": mask,
        "truth_chi": block_mean(ph.chi, factors),
        "truth_localfield": loc,
        "totalfield": tot - tot[m].mean(),
    }
    params = {
        "EchoTime": list(te),
        "MagneticFieldStrength": float(args.b0),
        "Phantom": "head",
        "Seed": args.seed,
        "SNR": snr,
        "VoxelSize_mm": list(geom.voxel_size),
        "SimulatedVoxelSize_mm": list(fine_vs),
        "B0Dir_voxel": list(geom.b0_dir),
        "TiltDeg": round(geom.tilt_deg, 6),
        "Pathology": bool(args.pathology),
        "Profile": args.profile,
        "IntravoxelDephasing": bool(args.dephasing),
        "Values_ppm": ph.info["head_values_ppm"],
        "ChiReference": "water (CSF) = 0; air +9.4",
        "PhaseUnits": "rad (wrapped)",
        "FieldUnits": "ppm",
    }
    write_case(out, arrays, geom, {"Phantom": "head", "Seed": args.seed}, force=args.force)
    from pathlib import Path

    from qsmnet.io.nifti import _atomic_write

    text = json.dumps(params, indent=2) + "\n"
    _atomic_write(out / "params.json", lambda tmp: Path(tmp).write_text(text))
    print(
        f"wrote {', '.join(n + '.nii.gz' for n in names)} and params.json to {out} "
        f"({len(te)} echoes, {args.b0:g} T, tilt {geom.tilt_deg:.1f} deg, SNR {snr:g})"
    )
    return 0
