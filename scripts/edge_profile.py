"""Error of each method by distance to a labelled structure's edge (a haematoma on benchmark v2).

For a benchmark v2 case with a ``labels.nii.gz`` (simulated heads), the signed distance to the
structure of ``--label`` (negative inside, voxels) splits the brain mask into one-voxel shells;
per shell and method it prints the mean and rms of ``chi - truth`` (both demeaned in the mask, as
nRMSE does), and each method's nRMSE split into the structure, its rim (``--rim`` voxels outside)
and the rest (``sqrt(sum of squared error there / sum of squared truth)``, so the three add in
quadrature to the nRMSE). This is how a network that smooths a sharp edge shows: a positive bias
one shell outside, a negative one one shell inside, where a classical estimate is unbiased.

    OMP_NUM_THREADS=2 python scripts/edge_profile.py path1_axial_1mm --methods unet_head tv \\
        --init-of unet_head
    OMP_NUM_THREADS=2 python scripts/edge_profile.py path1_oblique30_1mm --methods /tmp/run30.safetensors

``--init-of NET`` adds the estimate that network refines (its whole-volume initial estimate).
Labels: :data:`qsmnet.sim.head.HEAD_LABELS` (haemorrhage 22, the default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from qsmnet.compare import load_cases
from qsmnet.inference.methods import get_method
from qsmnet.inference.runner import whole_volume_init
from qsmnet.metrics import nrmse
from qsmnet.sim.head import HEAD_LABELS

SHELLS = (-6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8)


def signed_distance(region: np.ndarray) -> np.ndarray:
    """Voxel-centre signed distance to ``region``'s edge: -0.5, -1.5, ... inside, 0.5, 1.5, ... outside."""
    return np.where(region, 0.5 - ndimage.distance_transform_edt(region),
                    ndimage.distance_transform_edt(~region) - 0.5)


def split(err2: np.ndarray, t2: float, parts: dict[str, np.ndarray]) -> dict[str, float]:
    """Each part's share of the nRMSE (%), in quadrature."""
    return {k: 100 * float(np.sqrt(err2[v].sum() / t2)) for k, v in parts.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", help="benchmark v2 case name (with labels.nii.gz)")
    ap.add_argument("--methods", nargs="+", default=["unet_head", "tv"],
                    help="method names or network weights files")
    ap.add_argument("--init-of", help="also the initial estimate this network refines")
    ap.add_argument("--label", type=int, default=HEAD_LABELS["haemorrhage"])
    ap.add_argument("--rim", type=int, default=3, help="rim width outside the structure (voxels)")
    ap.add_argument("--benchmark-dir", default="data/benchmark_v2")
    args = ap.parse_args(argv)
    (case,) = load_cases("benchmark", names=[args.case], benchmark_dir=args.benchmark_dir, quiet=True)
    labels = np.asarray(nib.load(Path(args.benchmark_dir) / args.case / "labels.nii.gz").dataobj)
    m = case.mask.numpy() > 0
    region = labels == args.label
    if not (region & m).any():
        raise SystemExit(f"error: no voxel of label {args.label} inside the mask of {args.case}")
    sd = signed_distance(region)
    t = case.chi.numpy() - case.chi.numpy()[m].mean()
    t2 = float((t[m] ** 2).sum())
    parts = {"inside": region & m, f"rim 0-{args.rim}": (sd > 0) & (sd < args.rim) & m,
             "rest": (sd > args.rim) & m}
    print(f"{args.case}: label {args.label}, {int(parts['inside'].sum())} voxels, "
          f"{100 * (t[parts['inside']] ** 2).sum() / t2:.1f} % of the truth's energy")
    outs = {}
    if args.init_of:
        est = whole_volume_init(get_method(args.init_of).net, case.field[None, None],
                                case.mask.float()[None, None], case.geometry)
        if est is None:
            raise SystemExit(f"error: {args.init_of} computes its start inside the network; no --init-of")
        outs["init"] = est[:, :1]
    for name in args.methods:
        outs[Path(name).stem] = get_method(name)(case.field, case.mask.float(), case.geometry)
    errs = {}
    for name, x in outs.items():
        x = np.asarray(torch.as_tensor(x).squeeze().float())
        errs[name] = x - x[m].mean() - t
        e2 = errs[name] ** 2
        shares = ", ".join(f"{k} {v:.1f}" for k, v in split(e2, t2, parts).items())
        print(f"{name:>16s}: nRMSE {nrmse(x, case.chi.numpy(), m):.1f} % ({shares})")
    print("shell (voxels from the edge)  n  truth | " + " | ".join(f"{k}: bias rms" for k in errs))
    for lo in SHELLS:
        sel = ((sd >= lo) & (sd < lo + 1) if lo != SHELLS[0] else sd < lo + 1) & m
        if not sel.any():
            continue
        cols = " | ".join(f"{e[sel].mean():+.3f} {np.sqrt((e[sel] ** 2).mean()):.3f}" for e in errs.values())
        print(f"[{lo:+d}, {lo + 1:+d})  {int(sel.sum()):7d}  {t[sel].mean():+.3f} | {cols}")


if __name__ == "__main__":
    main()
