"""``qsmnet demo``: the whole pipeline on a simulated brain, no input needed (see :data:`DESCRIPTION`,
the one description of the demo; ``docs/compare.md`` quotes it)."""

from __future__ import annotations

import argparse

HELP = "simulate a brain phantom; compare every shipped network with TKD, Tikhonov and TV (no input needed)"
#: What the demo does, in the words every document uses.
DESCRIPTION = (
    "simulates a seeded 64³ brain phantom (1.5 mm voxels, axial B0, 0.002 ppm noise), reconstructs it "
    "with the default method first (`unet_head+guard`: the default network under its out-of-domain guard, "
    "which flags this small white-noise phantom and returns TV's answer), then every shipped network, TKD, "
    "Tikhonov and TV, prints the metrics table and "
    "writes it to ./qsmnet-demo/ with the figure demo.png (χ in a ±0.15 ppm window, error maps) and the "
    "input NIfTIs"
)

#: Methods of the demo, after the default one (``qsmnet.inference.DEFAULT_METHOD``) and every shipped network.
DEMO_METHODS = ("tkd", "tikhonov", "tv")


def _size(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 16:
        raise argparse.ArgumentTypeError(f"size must be at least 16, got {v}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="qsmnet-demo", help="output folder (default: ./qsmnet-demo)")
    parser.add_argument("--size", type=_size, default=64, help="grid edge in voxels (default: 64)")
    parser.add_argument("--voxel", type=float, default=1.5, help="isotropic voxel size in mm (default: 1.5)")
    parser.add_argument("--seed", type=int, default=7, help="phantom and noise seed (default: 7)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    import sys
    import time

    from qsmnet.compare import demo_case, run_comparison, summary_markdown
    from qsmnet.compare.cases import write_case_nifti
    from qsmnet.compare.core import check_out_dir
    from qsmnet.inference.methods import shipped_networks

    if not args.voxel > 0:
        raise ValueError(f"--voxel must be positive, got {args.voxel}")
    out = check_out_dir(args.out, args.force)
    t0 = time.perf_counter()
    if not args.quiet:
        print(f"qsmnet demo: simulating a {args.size}^3 brain phantom ({args.voxel:g} mm)", file=sys.stderr)
    case = demo_case(args.size, args.voxel, args.seed)
    write_case_nifti(case, out / "input" / case.name, force=True)
    methods = ["default", *shipped_networks(), *DEMO_METHODS]
    res = run_comparison(methods, [case], out_dir=out, device=args.device, progress=not args.quiet,
                         force=True)
    (out / f"slices_{case.name}.png").replace(out / "demo.png")
    print(summary_markdown(res), end="")
    print(f"qsmnet demo: wrote {out}/ (results.md, metrics.csv, demo.png, metrics.png, input/) "
          f"in {time.perf_counter() - t0:.0f} s; try: qsmnet predict {out}/input/{case.name}/field.nii.gz "
          f"--mask {out}/input/{case.name}/mask.nii.gz -o chi.nii.gz", file=sys.stderr)
    return 0
