"""``qsmnet simulate``: write a simulated phantom (chi, field, mask[, labels]) or the benchmark set."""

from __future__ import annotations

HELP = "simulate a phantom's local field (NIfTI, ppm), or write the fixed benchmark set"

_IMPERFECTIONS = ("background_residual", "nondipolar", "edge_errors", "external_background", "multi_echo")


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--phantom", choices=("shapes", "brain"), default="brain", help="phantom kind")
    parser.add_argument("--shape", type=int, nargs="+", default=[96, 112, 96], metavar="N",
                        help="grid size in voxels: one number or three (default 96 112 96)")
    parser.add_argument("--voxel-size", type=float, nargs="+", default=[1.0], metavar="MM",
                        help="voxel size in mm: one number or three (default 1)")
    parser.add_argument("--b0-dir", type=float, nargs=3, default=[0.0, 0.0, 1.0], metavar=("X", "Y", "Z"),
                        help="B0 direction in voxel axes (default 0 0 1); written as a rotated affine")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=float, default=None,
                       help="noise std = std of the noiseless field inside the mask / SNR")
    noise.add_argument("--noise-std", type=float, default=0.0, metavar="PPM",
                       help="noise std in ppm (default 0)")
    parser.add_argument("--imperfection", action="append", default=[], choices=_IMPERFECTIONS,
                        help="add an imperfection of real data (repeatable)")
    parser.add_argument("--scale", default="fit",
                        help="brain size: 'fit' (fill the field of view, at most real size) or a factor")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--benchmark", action="store_true",
                        help="write the fixed seeded benchmark set (all other options but -o are ignored)")
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
    if args.benchmark:
        path = make_benchmark(out, force=args.force, progress=lambda m: print(m, flush=True))
        n = len(json.loads(path.read_text())["cases"])
        print(f"benchmark set: {n} cases, manifest {path}")
        return 0
    shape = _triple(args.shape, "shape", int)
    vs = _triple(args.voxel_size, "voxel-size", float)
    if min(shape) < 3 or max(shape) > 512:
        raise QSMNetError(f"--shape must be between 3 and 512 voxels per axis, got {shape}")
    if not all(math.isfinite(v) and 0 < v <= 10 for v in vs):
        raise QSMNetError(f"--voxel-size must be in (0, 10] mm, got {vs}")
    if args.snr is not None and not (math.isfinite(args.snr) and args.snr > 0):
        raise QSMNetError(f"--snr must be a positive number, got {args.snr}")
    if not (math.isfinite(args.noise_std) and args.noise_std >= 0):
        raise QSMNetError(f"--noise-std must be >= 0 ppm, got {args.noise_std}")
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
    rng = np.random.default_rng(args.seed)
    if args.phantom == "brain":
        from qsmnet.sim.brain import brain_phantom

        ph = brain_phantom(shape, vs, rng, scale=scale)
    else:
        ph = shapes_phantom(shape, vs, rng)
    imp = {k: True for k in args.imperfection}
    weight = (ph.info or {}).get("wm_weight")
    sim = simulate(ph.chi, ph.mask, geom, rng, noise_std=args.noise_std, snr=args.snr, imperfections=imp,
                   weight=weight)
    arrays = {"chi": ph.chi, "field": sim.field, "mask": sim.mask, "labels": ph.labels,
              "phase": sim.phase, "magnitude": sim.magnitude}
    info = {"Phantom": args.phantom, "Seed": args.seed, "NoiseStd_ppm": sim.noise_std, "SNR": args.snr,
            "Imperfections": sorted(imp),
            "ChiReference": "CSF = 0" if args.phantom == "brain" else "zero mean"}
    if sim.te:
        info.update({"EchoTime_s": list(sim.te), "MagneticFieldStrength_T": 3.0})
    files = write_case(out, arrays, geom, info, force=args.force)
    print(f"wrote {', '.join(files.values())} to {out} (noise std {sim.noise_std:.5f} ppm, "
          f"tilt {geom.tilt_deg:.1f} deg)")
    return 0
