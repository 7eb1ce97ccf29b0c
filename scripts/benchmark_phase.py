"""Accuracy and speed of the phase pipeline (``qsmnet qsm``) on a simulated multi-echo case.

The case is simulated here (``qsmnet.sim.brain_phantom`` + ``simulate(imperfections=
{"external_background": True, "multi_echo": True})``: the field of a smooth air/bone-like
susceptibility outside the brain is added, then wrapped 5-echo phase and magnitude with R2*, a
receiver offset and noise), or read with ``--case DIR`` from a folder holding ``phase.nii.gz`` and
``mag.nii.gz`` (4D, echoes last), ``params.json`` (``te`` / ``EchoTime`` in s, ``b0`` /
``MagneticFieldStrength`` in T), a brain mask (``brainmask*.nii*`` or ``mask*.nii*``), the truth
local field (``truth_localfield*.nii*``) and optionally the truth chi (``truth_chi*``/``chi*``).

For each background-field removal it runs :func:`qsmnet.inference.qsm.run_qsm` and prints one
table row: local-field nRMSE (%) vs the truth inside the eroded mask, chi nRMSE (%) after the
inversion, mask coverage (computed mask vs truth, eroded mask vs truth) and seconds per step.
``--figure`` also draws docs/figures/qsm_pipeline.png on the real multi-echo crop.

    OMP_NUM_THREADS=2 python scripts/benchmark_phase.py --size 208 --threads 2
    python scripts/benchmark_phase.py --size 96 --bfr vsharp --figure
    python scripts/benchmark_phase.py --case /path/to/head_case
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from qsmnet.metrics import nrmse
from qsmnet.physics import Geometry

REAL = Path("/work/shared/realdata/multiecho_crop")
TE5 = (0.004, 0.009, 0.014, 0.019, 0.024)


def simulated_case(size: int, seed: int, echoes: int, b0: float = 3.0) -> dict:
    from qsmnet.sim import simulate
    from qsmnet.sim.brain import brain_phantom

    g = Geometry((size,) * 3, (1.0, 1.0, 1.0))
    ph = brain_phantom(g.shape, g.voxel_size, seed=seed)
    te = TE5[:echoes] if echoes <= 5 else tuple(0.004 + 0.005 * e for e in range(echoes))
    sim = simulate(ph.chi, ph.mask, g, seed=seed + 1, noise_std=0.0, te=te, b0=b0,
                   imperfections={"external_background": True, "multi_echo": True})  # fmt: skip
    m = sim.mask > 0
    return {"phase": sim.phase.numpy(), "mag": sim.magnitude.numpy(), "te": te, "b0": b0, "geometry": g,
            "mask": m.numpy(), "local": (sim.clean_field * sim.mask).numpy(), "chi": sim.chi.numpy(),
            "name": f"brain phantom {size}^3 x {len(te)} echoes (seed {seed})"}  # fmt: skip


def _first(folder: Path, *patterns):
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def folder_case(folder: Path) -> dict:
    from qsmnet.io import load_nifti

    params = json.loads((folder / "params.json").read_text())
    ph = load_nifti(folder / "phase.nii.gz", what="phase")
    mag = load_nifti(folder / "mag.nii.gz", what="magnitude")
    te = params.get("te") or params.get("EchoTime") or params.get("te_s")
    b0 = params.get("b0") or params.get("B0") or params.get("MagneticFieldStrength") or 3.0
    maskf = _first(folder, "brainmask*.nii*", "mask*.nii*")
    localf = _first(folder, "truth_localfield*.nii*", "localfield*.nii*")
    chif = _first(folder, "truth_chi*.nii*", "chi*.nii*")
    return {"phase": np.moveaxis(ph.data, -1, 0), "mag": np.moveaxis(mag.data, -1, 0), "te": tuple(te),
            "b0": float(b0), "geometry": ph.geometry, "mask": load_nifti(maskf).data > 0,
            "local": load_nifti(localf).data, "chi": load_nifti(chif).data if chif else None,
            "name": str(folder)}  # fmt: skip


def _unexplained(local: np.ndarray, case: dict, mask: np.ndarray) -> float:
    """||f - D chi_brain|| / ||f|| in ``mask`` (both demeaned): chi_brain = truth chi in the truth brain
    mask (the scalar dipole model of the brain, as scripts/realism_report.py)."""
    from realism_report import unexplained

    g = case["geometry"]
    chi = torch.as_tensor(case["chi"] * case["mask"])
    frac, _, _ = unexplained(torch.as_tensor(local), chi, torch.as_tensor(mask), g.voxel_size, g.b0_dir)
    return 100 * frac


def reference_row(case: dict, row: dict, brain_mask: np.ndarray, ours_local: np.ndarray,
                  ours_mask: np.ndarray, unwraps=("skimage",)):  # fmt: skip
    """Add the independent chain (scripts/reference_chain.py) on the same brain mask to ``row``, once
    per unwrapping method; with a truth chi also each chain's departure from the scalar dipole model."""
    from reference_chain import reference_local_field

    if case["chi"] is not None:
        row["ours_unexplained"] = _unexplained(ours_local, case, ours_mask & case["mask"])
        print("ours: local field unexplained by the brain's scalar dipole field "
              f"{row['ours_unexplained']:.1f} %")
    for u in unwraps:
        t0 = time.perf_counter()
        loc, rm = reference_local_field(case["phase"], case["mag"], case["te"], case["b0"],
                                        case["geometry"].voxel_size, brain_mask, unwrap=u)  # fmt: skip
        common = rm & ours_mask & case["mask"]
        key = "ref" if u == "skimage" else f"ref_{u}"
        row[f"{key}_local_nrmse"] = nrmse(loc, case["local"], rm & case["mask"])
        row[f"{key}_common_nrmse"] = nrmse(loc, case["local"], common)
        row["ours_common_nrmse"] = nrmse(ours_local, case["local"], common)
        row[f"{key}_s"] = time.perf_counter() - t0
        extra = ""
        if case["chi"] is not None:
            row[f"{key}_unexplained"] = _unexplained(loc, case, rm & case["mask"])
            extra = f"; unexplained by the scalar dipole field {row[f'{key}_unexplained']:.1f} %"
        print(f"reference chain ({u} unwrap + weighted fit + numpy V-SHARP): "
              f"{row[f'{key}_local_nrmse']:.1f} % in its mask; on the common mask ours "
              f"{row['ours_common_nrmse']:.1f} % vs reference "
              f"{row[f'{key}_common_nrmse']:.1f} % ({row[f'{key}_s']:.0f} s){extra}")  # fmt: skip


def run_case(case: dict, bfr: str, method: str, method_params: dict, given_mask: bool, ref=()) -> dict:
    from qsmnet.inference.qsm import run_qsm

    t0 = time.perf_counter()
    r = run_qsm(case["phase"], case["mag"], case["te"], case["b0"], case["geometry"], bfr=bfr, method=method,
                method_params=method_params, mask=case["mask"] if given_mask else None)  # fmt: skip
    wall = time.perf_counter() - t0
    m = r.mask.numpy()
    truth = case["mask"]
    bm = r.brain_mask.numpy()
    sec = {s["name"]: s["seconds"] for s in r.report["steps"]}
    row = {
        "bfr": bfr,
        "local_nrmse": nrmse(r.local_field.numpy(), case["local"], m & truth),
        "chi_nrmse": nrmse(r.chi.numpy(), case["chi"], m & truth)
        if case["chi"] is not None
        else float("nan"),
        "mask_dice": float(2 * (bm & truth).sum() / (bm.sum() + truth.sum())),
        "eroded_coverage": float((m & truth).sum() / truth.sum()),
        "seconds": sec,
        "no_inversion_s": sum(v for k, v in sec.items() if k != "inversion"),
        "wall_s": wall,
    }
    if ref and bfr == "vsharp":
        reference_row(case, row, bm, r.local_field.numpy(), m, unwraps=ref)
    return row


def mask_rows(case: dict, strips=(0.0, 4.0)) -> list[str]:
    """Dice of ``brain_mask`` (plain and skull-stripped) against the case's truth brain mask."""
    from qsmnet.phase import brain_mask

    truth = case["mask"]
    out = ["| strip_mm | Dice | volume / truth | truth voxels missed | s |", "|---|---|---|---|---|"]
    for s in strips:
        t0 = time.perf_counter()
        m = brain_mask(case["mag"], case["geometry"].voxel_size, strip_mm=s).numpy()
        dice = 2 * (m & truth).sum() / (m.sum() + truth.sum())
        missed = (truth & ~m).sum() / truth.sum()
        out.append(f"| {s:g} | {dice:.4f} | {m.sum() / truth.sum():.3f} | {missed:.4f} "
                   f"| {time.perf_counter() - t0:.1f} |")  # fmt: skip
    return out


def table(rows: list[dict]) -> str:
    head = ("| BFR | local field nRMSE % | chi nRMSE % | mask Dice | eroded mask / truth | mask s "
            "| echo fit s | BFR s | inversion s | pipeline excl. inversion s |")  # fmt: skip
    out = [head, "|" + "---|" * 10]
    for r in rows:
        s = r["seconds"]
        out.append(f"| {r['bfr']} | {r['local_nrmse']:.1f} | {r['chi_nrmse']:.1f} | {r['mask_dice']:.3f} | "
                   f"{r['eroded_coverage']:.3f} | {s['mask']:.1f} | {s['echo_fit']:.1f} | "
                   f"{s['background']:.1f} | {s['inversion']:.1f} | {r['no_inversion_s']:.1f} |")  # fmt: skip
    return "\n".join(out)


def figure(path: Path, radii=(4.0, 3.0, 2.0, 1.0)) -> None:
    """Magnitude, unwrapped last-echo phase, local field and chi on the real multi-echo crop (3 T assumed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsmnet.inference.qsm import run_qsm
    from qsmnet.io import load_nifti

    ph, mg = load_nifti(REAL / "phase.nii.gz"), load_nifti(REAL / "mag.nii.gz")
    te = (0.004, 0.008, 0.012)
    r = run_qsm(np.moveaxis(ph.data, -1, 0), np.moveaxis(mg.data, -1, 0), te, 3.0, ph.geometry,
                bfr_params={"radii_mm": radii})  # fmt: skip
    from qsmnet.physics import ppm_to_rad

    k = ph.data.shape[2] // 2
    unwrapped = ppm_to_rad(r.total_field.numpy(), te[-1], 3.0)
    panels = [
        ("magnitude, echo 1", mg.data[..., k, 0], "gray", None),
        ("wrapped phase, echo 3 (rad)", ph.data[..., k, 2], "twilight", (-np.pi, np.pi)),
        ("unwrapped phase, echo 3 (rad)", unwrapped[..., k], "RdBu_r", None),
        ("local field (ppm, V-SHARP)", r.local_field.numpy()[..., k], "RdBu_r", (-0.05, 0.05)),
        ("chi (ppm, TV)", r.chi.numpy()[..., k], "gray", (-0.1, 0.1)),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4))
    for ax, (title, img, cmap, lim) in zip(axes, panels, strict=True):
        if lim is None:
            v = np.abs(img[r.brain_mask.numpy()[..., k]]).max() if r.brain_mask[..., k].any() else 1
            lim = (-v, v) if cmap != "gray" else (0, float(img.max()))
        im = ax.imshow(np.rot90(img), cmap=cmap, vmin=lim[0], vmax=lim[1])
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(
        "qsmnet qsm on the real 3-echo crop (ROMEO test data; TE 4/8/12 ms; B0 taken as 3 T)", fontsize=10
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path} (mask {r.report['steps'][0]['coverage']:.2f}, V-SHARP kept "
          f"{r.report['steps'][2]['kept_of_brain_mask']:.2f}, {r.report['seconds']:.1f} s)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=208)
    ap.add_argument("--echoes", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=Path, help="case folder (see the module docstring) instead of simulating")
    ap.add_argument("--bfr", nargs="+", default=["vsharp", "pdf"], choices=("vsharp", "pdf"))
    ap.add_argument("--method", default="tv")
    ap.add_argument("--iterations", type=int, help="iteration cap of the method")
    ap.add_argument(
        "--given-mask", action="store_true", help="use the truth brain mask instead of brain_mask"
    )
    ap.add_argument("--mask-only", action="store_true", help="only brain_mask's Dice, plain and stripped")
    ap.add_argument(
        "--reference", nargs="*", choices=("skimage", "laplacian"), default=None,
        help="also run scripts/reference_chain.py (V-SHARP rows) with these unwrappings (default skimage)",
    )
    ap.add_argument("--threads", type=int, help="torch threads (e.g. 2 for the speed goal)")
    ap.add_argument("--figure", action="store_true", help="also draw docs/figures/qsm_pipeline.png")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    case = folder_case(args.case) if args.case else simulated_case(args.size, args.seed, args.echoes)
    print(
        f"case: {case['name']} ({time.perf_counter() - t0:.1f} s to build), {torch.get_num_threads()} threads"
    )
    if args.mask_only:
        print("\n".join(mask_rows(case)))
        return
    params = {"iterations": args.iterations} if args.iterations else {}
    ref = () if args.reference is None else tuple(args.reference) or ("skimage",)
    rows = [run_case(case, b, args.method, params, args.given_mask, ref) for b in args.bfr]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if args.figure:
        figure(Path(__file__).resolve().parents[1] / "docs" / "figures" / "qsm_pipeline.png")


if __name__ == "__main__":
    main()
