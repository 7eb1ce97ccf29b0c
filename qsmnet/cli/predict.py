"""``qsmnet predict``: reconstruct a susceptibility map (ppm) from a local-field NIfTI."""

from __future__ import annotations

import argparse

HELP = "reconstruct a susceptibility map (ppm) from a local field NIfTI with a chosen method"

_METHODS = "tkd, tsvd, tikhonov, ilsqr, tv, medi, ndi"


def _lambda(text: str):
    if text.lower() == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'auto', got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"lambda must be positive, got {text}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("field", metavar="FIELD", help="local field map, 3D NIfTI (see --units)")
    parser.add_argument("--mask", required=True, help="brain mask on the field's grid (non-zero inside)")
    parser.add_argument(
        "-o", "--output", required=True, help="output chi NIfTI (ppm); a .json sidecar is written beside it"
    )
    parser.add_argument("--method", default=None, help=f"reconstruction method: {_METHODS} (default: tv)")
    g = parser.add_argument_group("method parameters (defaults: the method's own, see its docstring)")
    g.add_argument(
        "--lambda", dest="lam", type=_lambda, help="regularisation weight, or 'auto' (tikhonov, tv, medi)"
    )
    g.add_argument("--iterations", type=int, help="iteration cap of iterative methods")
    g.add_argument("--threshold", type=float, help="kernel threshold of tkd / tsvd")
    g.add_argument("--tol", type=float, help="stopping tolerance of iterative methods")
    parser.add_argument(
        "--magnitude", help="magnitude image on the field's grid (medi edges, medi/ndi weights)"
    )
    parser.add_argument(
        "--voxel-size", nargs=3, type=float, metavar=("X", "Y", "Z"), help="override voxel size (mm)"
    )
    parser.add_argument(
        "--b0-dir",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="override B0 direction in voxel axes (default: from the affine)",
    )
    parser.add_argument(
        "--units", choices=("ppm", "hz", "rad"), default="ppm", help="units of FIELD (default ppm)"
    )
    parser.add_argument("--b0", type=float, help="field strength (T), for --units hz/rad")
    parser.add_argument("--te", type=float, help="echo time (s), for --units rad")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")


def run(args) -> int:
    from qsmnet.inference import DEFAULT_METHOD, predict_file

    params = {
        k: v
        for k, v in (
            ("lam", args.lam),
            ("iterations", args.iterations),
            ("threshold", args.threshold),
            ("tol", args.tol),
        )
        if v is not None
    }
    side = predict_file(
        args.field,
        args.mask,
        args.output,
        method=args.method or DEFAULT_METHOD,
        params=params,
        units=args.units,
        b0=args.b0,
        te=args.te,
        voxel_size=args.voxel_size,
        b0_dir=args.b0_dir,
        magnitude_path=args.magnitude,
        device=args.device,
        force=args.force,
    )
    res = side["residual"]
    print(
        f"{args.output}: {side['method']} on {side['device']}, {side['iterations']} iterations, "
        f"residual {res:.3g}, {side['seconds']:.2f} s"
    )
    return 0
