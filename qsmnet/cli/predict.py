"""``qsmnet predict``: reconstruct a susceptibility map (ppm) from a local-field NIfTI.

One subject (``FIELD --mask MASK -o OUT``) or many with one loaded model (``--list FILE`` or
``--bids DIR``). The method defaults to the best shipped network (``tv`` when none is shipped).
"""

from __future__ import annotations

import argparse

HELP = "reconstruct a susceptibility map (ppm) from a local field NIfTI with a network or a solver"

_SOLVERS = "tkd, tsvd, tikhonov, ilsqr, tv, medi, ndi"


def lambda_value(text: str):
    """``--lambda``: a positive weight or the name of a chooser (:mod:`qsmnet.solvers.select`)."""
    from qsmnet.solvers.select import CHOOSERS, SOLVER_CHOOSERS

    choosers = ("auto", *CHOOSERS, *SOLVER_CHOOSERS)
    return text.lower() if text.lower() in choosers else _positive(float)(text)


def _window(text: str):
    if text.lower() in ("auto", "off"):
        return text.lower()
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto, off or a window edge in voxels, got {text!r}"
        ) from None
    if v < 8:
        raise argparse.ArgumentTypeError(f"window must be at least 8 voxels, got {v}")
    return v


def _overlap(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"overlap must be in [0, 1), got {text}")
    return v


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return v

    return parse


def _dc_weight(text: str):
    """``--dc``: a positive weight or ``auto``."""
    return "auto" if text == "auto" else _positive(float)(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("field", metavar="FIELD", nargs="?", help="local field map, 3D NIfTI (see --units)")
    parser.add_argument("--mask", help="brain mask on the field's grid (non-zero inside)")
    parser.add_argument("-o", "--output", help="output chi NIfTI (ppm); a .json sidecar is written beside it")
    many = parser.add_argument_group("many subjects, one loaded model (instead of FIELD --mask -o)")
    many.add_argument(
        "--list",
        dest="list_file",
        metavar="FILE",
        help="file of 'FIELD MASK OUT' lines (paths relative to the file's folder)",
    )
    many.add_argument("--bids", metavar="DIR", help="BIDS-like folder: *_Localfield.nii* + *_mask.nii* per "
                      "subject -> DIR/derivatives/qsmnet/sub-*/.../*_Chimap.nii.gz")  # fmt: skip
    parser.add_argument("--method", default=None, help=f"a shipped network or a solver ({_SOLVERS}); "
                        "default: the network cleared as the default, under its out-of-domain guard "
                        "(tv's answer when it flags; tv if none is cleared)")  # fmt: skip
    parser.add_argument(
        "--checkpoint", metavar="PATH", help="network weights (.safetensors + .json, or .ckpt)"
    )
    g = parser.add_argument_group("solver parameters (defaults: the method's own, see its docstring)")
    g.add_argument(
        "--lambda",
        dest="lam",
        type=lambda_value,
        help="weight, or auto/model/lcurve/freq/noise (tikhonov, tv, medi, ilsqr, ndi); wiener (tikhonov)",
    )
    g.add_argument("--iterations", type=int, help="iteration cap of iterative methods")
    g.add_argument("--threshold", type=float, help="kernel threshold of tkd / tsvd")
    g.add_argument("--tol", type=float, help="stopping tolerance of iterative methods")
    g.add_argument("--strong", type=float, metavar="PPM",
                   help="tikhonov: fit regions whose first estimate exceeds PPM (e.g. 0.3; a haematoma) "
                        "on their own support first, removing their streaks")
    add_network_arguments(parser)
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
    parser.add_argument("--residual-map", metavar="PATH", help="also write M (D * chi - f) (ppm) here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (--list/--bids)")


def add_network_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a network prediction (shared by ``qsmnet predict`` and ``qsmnet qsm``)."""
    n = parser.add_argument_group("network options")
    n.add_argument("--window", type=_window, help="sliding-window edge (voxels), 'off' (whole volume) or "
                   "'auto' (default: whole volume when the memory estimate fits)")  # fmt: skip
    n.add_argument("--overlap", type=_overlap, help="sliding-window overlap fraction (default 0.5)")
    n.add_argument(
        "--max-memory",
        type=_positive(float),
        metavar="GB",
        help="memory budget in GB (default: half the free memory of the device)",
    )
    n.add_argument("--half", action="store_true", help="float16 autocast on CUDA (ignored on the CPU)")
    n.add_argument(
        "--refine", type=int, metavar="N", help="N Adam steps of test-time data-consistency tuning"
    )
    n.add_argument("--refine-lr", type=_positive(float), help="learning rate of --refine (default 1e-4)")
    n.add_argument("--fallback", choices=("tv",), help="check each network prediction with the "
                   "out-of-domain guard (qsmnet.inference.guard); return this solver's answer if flagged "
                   "(always on for the default method)")
    n.add_argument("--dc", type=_dc_weight, metavar="MU", help="final data-consistency step: minimise "
                   "||M(D chi - f)||^2 + MU ||chi - chi_net||^2; MU a weight (e.g. 0.3) or 'auto' (chosen "
                   "per case from the network's residual, none when it has no heavy tail); default: no step")
    n.add_argument("--flips", type=int, choices=(1, 2, 4, 8),
                   help="test-time flip averaging: mean over this many flipped copies (default 4; 1: off)")


def with_fallback(method, fallback: str | None):
    """``method`` under the out-of-domain guard with ``--fallback``'s solver, or as given without one."""
    if not fallback:
        return method
    from qsmnet.inference.methods import guarded

    return guarded(method, fallback)


def network_params(args) -> dict:
    """The network options given on the command line, as the network's keyword parameters.

    Raises:
        QSMNetError: a negative ``--refine``.
    """
    from qsmnet.errors import QSMNetError

    if args.refine is not None and args.refine < 0:
        raise QSMNetError(f"--refine must be >= 0, got {args.refine}")
    pairs = [
        ("window", args.window),
        ("overlap", args.overlap),
        ("max_memory", args.max_memory * 1024**3 if args.max_memory else None),
        ("half", True if args.half else None),
        ("refine", args.refine),
        ("refine_lr", args.refine_lr),
        ("flips", args.flips),
        ("dc", args.dc),
    ]
    return {k: v for k, v in pairs if v is not None}


def _params(args) -> dict:
    pairs = [
        ("lam", args.lam),
        ("iterations", args.iterations),
        ("threshold", args.threshold),
        ("tol", args.tol),
        ("strong", args.strong),
    ]
    return {**{k: v for k, v in pairs if v is not None}, **network_params(args)}


def check_units(args) -> None:
    """The field-strength and echo-time options, checked with the CLI's flag names.

    Raises:
        QSMNetError: a missing ``--b0``/``--te`` for the units, or one in the wrong unit
            (TE in ms, B0 in mT or Hz), in one line that names the flag and the unit expected.
    """
    from qsmnet.errors import QSMNetError
    from qsmnet.physics import check_b0, check_te

    for flag, value, check in (("--b0", args.b0, check_b0), ("--te", args.te, check_te)):
        if value is not None:
            try:
                check(value)
            except ValueError as e:
                raise QSMNetError(f"{flag}: {e}") from None
    need = {"hz": ("--b0",), "rad": ("--b0", "--te")}.get(args.units, ())
    missing = [f for f in need if getattr(args, f[2:]) is None]
    if missing:
        raise QSMNetError(f"--units {args.units} needs {' and '.join(missing)} "
                          "(field strength in T, echo time in s)")  # fmt: skip


def run(args) -> int:
    from qsmnet.errors import QSMNetError

    check_units(args)
    if args.method and args.checkpoint:
        raise QSMNetError("give --method or --checkpoint, not both")
    method = with_fallback(args.checkpoint or args.method, args.fallback)
    batch = [x for x in (args.list_file, args.bids) if x]
    common = dict(units=args.units, b0=args.b0, te=args.te, voxel_size=args.voxel_size, b0_dir=args.b0_dir,
                  magnitude_path=args.magnitude, device=args.device, force=args.force)  # fmt: skip
    if batch:
        if len(batch) > 1 or args.field or args.mask or args.output or args.residual_map or args.magnitude:
            raise QSMNetError("--list/--bids take no FIELD, --mask, -o, --residual-map or --magnitude")
        return _run_many(args, method, common)
    missing = [n for n, v in (("FIELD", args.field), ("--mask", args.mask), ("-o", args.output)) if not v]
    if missing:
        raise QSMNetError(f"missing {', '.join(missing)} (or use --list FILE / --bids DIR)")

    from qsmnet.inference import predict_file

    side = predict_file(args.field, args.mask, args.output, method=method, params=_params(args),
                        residual_map=args.residual_map, **common)  # fmt: skip
    print(_summary(args.output, side))
    return 0


def returned(what: str, name: str, guard: dict | None) -> str:
    """``what`` (the method ``name`` as a summary line shows it), naming the fallback when the
    out-of-domain guard replaced the network's answer with a solver's."""
    back = (guard or {}).get("returned")
    return f"{what} flagged out of domain, {back} returned" if back not in (None, name) else what


def _summary(out, side: dict) -> str:
    model = side.get("model")
    name = side["method"]
    what = returned(f"{name} ({model['version']})" if model else name, name, side.get("guard"))
    its = f", {side['iterations']} iterations" if side.get("iterations") is not None else ""
    inf = side.get("inference") or {}
    mode = f", {inf['mode']}" if inf else ""
    ref = side.get("refine")
    refined = f", refined {ref['residual_before']:.3g} -> {ref['residual_after']:.3g}" if ref else ""
    return (f"{out}: {what} on {side['device']}{mode}{its}, residual {side['residual']:.3g}{refined}, "
            f"{side['wall_seconds']:.2f} s")  # fmt: skip


def _run_many(args, method, common) -> int:
    from qsmnet.inference import find_bids_subjects, predict_many, read_subject_list

    subjects = read_subject_list(args.list_file) if args.list_file else find_bids_subjects(args.bids)
    results = predict_many(subjects, method=method, params=_params(args), progress=not args.no_progress,
                           make_dirs=bool(args.bids), **common)  # fmt: skip
    failed = [r for r in results if "error" in r]
    for r in results:
        if "sidecar" in r:
            print(_summary(r["subject"].out, r["sidecar"]))
    print(f"{len(results) - len(failed)} of {len(results)} subject(s) reconstructed"
          + (f", {len(failed)} failed" if failed else ""))  # fmt: skip
    return 1 if failed else 0
