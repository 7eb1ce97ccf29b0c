"""Real data without ground truth: every lambda chooser on a tissue-phase case, as figures.

Reads ``phase_rad.nii.gz`` / ``mask.nii.gz`` / ``phase_rad.json`` (EchoTime, MagneticFieldStrength,
B0_dir_voxel) from each folder, converts to ppm (``rad / (2 pi 42.577478 B0 TE)``), runs the
solvers with each chooser and writes one PNG per case: per row a method, columns an axial and a
coronal chi slice and the axial data residual ``M (D chi - f)`` (which should show no anatomy).

    python scripts/lambda_realdata.py /work/shared/realdata/hemorrhage_3t -o docs/figures

``--runs METHOD[:CHOOSER] ...`` replaces the rows (a solver with its chooser, or any method name of
:func:`qsmnet.inference.methods.get_method`, e.g. a shipped network, with ``:key=value,...`` for its
parameters, e.g. ``unet_head:dc=auto``) and ``--prefix`` the file names, e.g. the networks' figure:

    python scripts/lambda_realdata.py /work/shared/realdata/hemorrhage_3t -o docs/figures \
        --runs tv:auto tkd unet unet_head --prefix networks
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from qsmnet.inference.methods import get_method
from qsmnet.physics import DipoleOperator, Geometry

RUNS = [
    ("tv", "auto"),
    ("tv", "lcurve"),
    ("tv", "noise"),
    ("tikhonov", "auto"),
    ("medi", "auto"),
    ("ilsqr", "auto"),
    ("ndi", "auto"),
]


def load(folder: Path):
    meta = json.loads((folder / "phase_rad.json").read_text())
    img = nib.load(folder / "phase_rad.nii.gz")
    rad = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(folder / "mask.nii.gz").dataobj) > 0
    ppm = rad / (2 * math.pi * 42.577478 * meta["MagneticFieldStrength"] * meta["EchoTime"])
    geom = Geometry(
        rad.shape, tuple(float(z) for z in img.header.get_zooms()[:3]), tuple(meta["B0_dir_voxel"])
    )
    return torch.from_numpy(ppm * mask), torch.from_numpy(mask.astype(np.float32)), geom


def _params(spec: str | None) -> dict:
    """The method's keyword parameters from a ``--runs`` suffix: a λ chooser (``auto``, ``lcurve``, a
    number), or ``key=value`` pairs separated by commas (``dc=auto``, ``dc=0.3,flips=1``)."""
    if spec is None:
        return {}
    if "=" not in spec:
        return key_values([f"lam={spec}"])
    return key_values(spec.split(","))


def key_values(pairs) -> dict:
    """``["dc=0.3", "flips=1", "bfr=pdf"]`` -> ``{"dc": 0.3, "flips": 1, "bfr": "pdf"}`` (numbers parsed)."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        try:
            out[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            out[key] = value
    return out


def main(argv=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("-o", "--out", default="docs/figures")
    ap.add_argument("--slice", type=float, default=0.5, help="axial slice as a fraction of Z")
    ap.add_argument("--runs", nargs="+", metavar="METHOD[:CHOOSER]", help="rows (default: RUNS)")
    ap.add_argument("--prefix", default="lambda", help="file names PREFIX_<case>.png, PREFIX_realdata.json")
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)  # before minutes of solves, not after
    runs = [tuple(r.split(":", 1)) if ":" in r else (r, None) for r in args.runs] if args.runs else RUNS
    rows = []
    for folder in map(Path, args.folders):
        field, mask, geom = load(folder)
        op = DipoleOperator(geom, pad=False)
        z = int(args.slice * field.shape[2])
        y = int(np.argmax(mask.sum((0, 2)).numpy()))
        fig, ax = plt.subplots(len(runs), 3, figsize=(9, 2.6 * len(runs)), squeeze=False)
        for r, (solver, lam) in enumerate(runs):
            info = {}
            t0 = time.perf_counter()
            kw = _params(lam)
            chi = torch.as_tensor(get_method(solver)(field, mask, geom, info=info, **kw))
            dt = time.perf_counter() - t0
            res = (op.A(chi) - field) * mask
            rel = float(res.norm() / field.norm())
            lam_used = info.get("lambda")
            label = solver if lam_used is None else f"{solver} {lam}: λ {lam_used:.3g}"
            if "dc" in info:
                label += f" dc {lam.split('=', 1)[1]}: μ {info['dc']['mu']}"
            label += (
                f", {info['iterations']} it" if solver in ("ilsqr", "ndi") else ""
            )
            rows.append(
                dict(
                    case=folder.name,
                    solver=solver,
                    chooser=lam,
                    method=info.get("lambda_method"),
                    lam=lam_used,
                    iterations=info.get("iterations"),
                    misfit=rel,
                    seconds=dt,
                )
            )
            print(f"{folder.name} {label} misfit {rel:.3f} ({dt:.1f} s)", flush=True)
            c = chi.numpy()
            win = 0.1 if "mouse" not in folder.name else 0.05
            ax[r, 0].imshow(c[:, :, z].T, cmap="gray", vmin=-win, vmax=win, origin="lower")
            ax[r, 1].imshow(
                c[:, y, :].T,
                cmap="gray",
                vmin=-win,
                vmax=win,
                origin="lower",
                aspect=geom.voxel_size[2] / geom.voxel_size[0],
            )
            fw = float(field[mask > 0].std()) * 2
            ax[r, 2].imshow(res.numpy()[:, :, z].T, cmap="gray", vmin=-fw, vmax=fw, origin="lower")
            ax[r, 0].set_ylabel(label, fontsize=8)
            ax[r, 2].set_title(f"residual, {100 * rel:.0f} % of ||f||", fontsize=8)
            for a in ax[r]:
                a.set_xticks([])
                a.set_yticks([])
        ax[0, 0].set_title(f"chi axial (±{win} ppm)", fontsize=8)
        ax[0, 1].set_title("chi coronal", fontsize=8)
        fig.tight_layout()
        out = Path(args.out) / f"{args.prefix}_{folder.name}.png"
        fig.savefig(out, dpi=80)
        plt.close(fig)
        print("wrote", out)
    (Path(args.out) / f"{args.prefix}_realdata.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
