"""``qsmnet qsm``: the full pipeline, wrapped multi-echo phase + magnitude -> chi (ppm) and its maps.

One acquisition (``--phase ... --mag ... -o DIR``) or every MEGRE run of a BIDS folder (``--bids``).
Steps, file formats and outputs: :mod:`qsmnet.inference.qsm` and :mod:`qsmnet.inference.qsm_files`.
"""

from __future__ import annotations

import argparse

from .predict import add_network_arguments, lambda_value, network_params, returned, with_fallback

HELP = "full QSM pipeline: wrapped multi-echo phase + magnitude -> chi, local and total field (ppm)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--phase",
        nargs="+",
        metavar="PHASE",
        help="wrapped phase (rad or integer codes): one 4D NIfTI (echoes last) or one 3D per echo",
    )
    parser.add_argument("--mag", nargs="+", metavar="MAG", help="magnitude, same layout as --phase")
    parser.add_argument("--mask", help="brain mask on the phase's grid (default: from the magnitude)")
    parser.add_argument(
        "--te", nargs="+", type=float, metavar="T", help="echo times in s (default: sidecars)"
    )
    parser.add_argument("--b0", type=float, metavar="TESLA", help="field strength (default: sidecar)")
    parser.add_argument(
        "--method", default=None, help="inversion method: a solver or shipped network (default: as qsmnet "
        "predict's, the default network under its out-of-domain guard, else tv)"
    )
    parser.add_argument(
        "--unwrap",
        choices=("quality", "laplacian"),
        default="quality",
        help="spatial unwrapping (default quality)",
    )
    parser.add_argument(
        "--bfr", choices=("vsharp", "pdf"), default="vsharp", help="background-field removal (default vsharp)"
    )
    parser.add_argument("--radii", nargs="+", type=float, metavar="MM", help="V-SHARP radii in mm")
    parser.add_argument(
        "--lambda", dest="lam", type=lambda_value, help="the method's weight, or auto/model/lcurve/freq/noise"
    )
    add_network_arguments(parser)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("-o", "--output", metavar="DIR", help="output folder")
    parser.add_argument("--bids", metavar="DIR", help="process every *_part-phase_MEGRE run of a BIDS folder "
                        "into DIR/derivatives/qsmnet/... (instead of --phase/--mag/-o)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="overwrite outputs")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")


def _options(args) -> dict:
    from qsmnet.inference.qsm import QSM_METHOD

    bfr_params = {"radii_mm": tuple(args.radii)} if args.radii else {}
    if args.radii and args.bfr != "vsharp":
        from qsmnet.errors import QSMNetError

        raise QSMNetError("--radii applies to --bfr vsharp only")
    method_params = {"lam": args.lam} if args.lam is not None else {}
    method_params.update(network_params(args))
    method = with_fallback(args.method or QSM_METHOD, args.fallback)
    return dict(unwrap=args.unwrap, bfr=args.bfr, method=method, bfr_params=bfr_params,
                method_params=method_params, device=args.device)  # fmt: skip


def _what(rep: dict) -> str:
    inv = next((s for s in rep["steps"] if s["name"] == "inversion"), {})
    return returned(rep["method"], rep["method"], inv.get("guard"))


def run(args) -> int:
    import logging
    import sys

    from qsmnet.errors import QSMNetError
    from qsmnet.inference.qsm_files import find_megre_runs, qsm_files

    if args.quiet:  # the notes (steps, device) of the qsmnet logger that main() set up; warnings stay
        logging.getLogger("qsmnet").setLevel(logging.WARNING)
    opts = _options(args)
    if args.bids:
        if args.phase or args.mag or args.mask or args.output:
            raise QSMNetError("--bids takes no --phase, --mag, --mask or -o")
        failed = 0
        runs = find_megre_runs(args.bids)
        for r in runs:
            try:
                r.out.parent.mkdir(parents=True, exist_ok=True)
                rep = qsm_files(r.phase, r.magnitude, r.out, te=args.te, b0=args.b0, force=args.force, **opts)
                print(f"{r.out}: {_what(rep)}, {rep['seconds']:.1f} s")
            except (QSMNetError, ValueError, OSError) as e:
                failed += 1
                print(f"qsmnet qsm: {r.phase[0]}: error: {' '.join(str(e).split())}", file=sys.stderr)
        print(
            f"{len(runs) - failed} of {len(runs)} run(s) processed" + (f", {failed} failed" if failed else "")
        )
        return 1 if failed else 0
    missing = [n for n, v in (("--phase", args.phase), ("-o", args.output)) if not v]
    if missing:
        raise QSMNetError(f"missing {', '.join(missing)} (or use --bids DIR)")
    rep = qsm_files(args.phase, args.mag, args.output, mask_path=args.mask, te=args.te, b0=args.b0,
                    force=args.force, **opts)  # fmt: skip
    print(f"{args.output}: chi and maps written ({_what(rep)}, {rep['seconds']:.1f} s)")
    return 0
