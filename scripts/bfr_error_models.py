"""The fast imperfection models of ``qsmnet.sim.forward`` against the errors of real background removal.

Issue 15 asks to keep the cheap imperfection models (``simulate(imperfections=...)``:
``background_residual``, a low-order polynomial; ``edge_errors``, a smooth error in a band inside
an eroded mask edge) as an alternative to background-field removal on simulated total fields, and
to measure how close they come to the real thing. This script builds one real-size head (the
real-field profile, a seed that is not a benchmark head's), computes its total field without
noise, and compares, inside each method's own mask:

* **V-SHARP** (``qsmnet.phase.vsharp``, the pipeline's default) and **PDF**
  (``qsmnet.phase.pdf``): error = local field found - true local field (the brain's own field,
  non-dipolar part included), both demeaned in the mask;
* **fast models**: ``background_residual`` and ``edge_errors`` (alone and together), and
  ``bfr_remnant`` (calibrated on this comparison, session 26), as ``simulate`` draws them for this
  brain (error = simulated field - the brain's dipole field), over several seeds.

For each error: its rms in ppm and as a percentage of the true local field's rms; its rms by
distance from the brain mask's edge (mm); and the share of its energy in the bands of
``scripts/realism_report.py`` (cycles/mm). Usage (1 mm, ~6 min on 2 threads; ``--voxel 2`` ~1 min)::

    OMP_NUM_THREADS=2 python scripts/bfr_error_models.py [--voxel 1] [--seed 0] [--draws 8] [--tilt 0]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from realism_report import BANDS, band_shares  # noqa: E402

from qsmnet.phase import pdf, vsharp  # noqa: E402
from qsmnet.physics import Geometry  # noqa: E402
from qsmnet.sim.acquire import HEAD_PROFILES, head_fields, oblique_bandlimit  # noqa: E402
from qsmnet.sim.forward import edge_distance, simulate  # noqa: E402
from qsmnet.sim.head import head_phantom  # noqa: E402

#: distance from the brain mask's edge (mm): the shells the error's rms is reported in
SHELLS_MM = ((0.0, 3.0), (3.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, math.inf))


def error_stats(err: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, dist: torch.Tensor,
                voxel_size) -> dict:
    """rms of ``err`` (ppm and % of the truth's rms), by edge-distance shell, and band shares;
    both fields demeaned inside ``mask`` first."""
    m = mask > 0
    e = torch.where(m, err.double() - err.double()[m].mean(), 0.0)
    t = torch.where(m, truth.double() - truth.double()[m].mean(), 0.0)
    rms_t = float(t[m].square().mean().sqrt())
    rms = float(e[m].square().mean().sqrt())
    shells = []
    for lo, hi in SHELLS_MM:
        s = m & (dist >= lo) & (dist < hi)
        shells.append(float(e[s].square().mean().sqrt()) if s.any() else float("nan"))
    return {"rms_ppm": rms, "rms_pct": 100 * rms / rms_t, "shells_ppm": shells,
            "bands": band_shares(e, voxel_size)}


def _row(name: str, s: dict) -> str:
    shells = " / ".join(f"{1000 * v:.1f}" for v in s["shells_ppm"])
    bands = " / ".join(f"{v:.0f}" for v in s["bands"])
    return f"| {name} | {1000 * s['rms_ppm']:.1f} | {s['rms_pct']:.0f} % | {shells} | {bands} |"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=1.0, help="mm, isotropic (default 1: real size)")
    ap.add_argument("--seed", type=int, default=0, help="head seed (default 0, not a benchmark head)")
    ap.add_argument("--draws", type=int, default=8, help="seeds of the fast models (default 8)")
    ap.add_argument("--tilt", type=float, default=0.0, help="B0 tilt from the z axis (degrees)")
    ap.add_argument("--no-pdf", action="store_true", help="skip PDF (its CG is the slow part)")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    vs = (a.voxel,) * 3
    shape = tuple(int(round(n / a.voxel)) for n in (192, 224, 192))
    t = math.radians(a.tilt)
    b0 = (math.sin(t), 0.0, math.cos(t))
    profile, _ = HEAD_PROFILES["real-field"]
    ph = head_phantom(shape, vs, np.random.default_rng(a.seed), **profile)
    total, local = head_fields(ph, vs, b0, bandlimit=oblique_bandlimit(b0) if a.tilt else None)
    geom = Geometry(shape, vs, b0)
    dist = edge_distance(ph.mask, vs)
    loc_v, m_v = vsharp(total, ph.mask, vs)
    rows = [_row("V-SHARP (12..2 mm)", error_stats(loc_v - local, local, m_v, dist, vs))]
    if not a.no_pdf:
        loc_p, m_p = pdf(total, ph.mask, geom)
        rows.append(_row("PDF (50 CG)", error_stats(loc_p - local, local, m_p, dist, vs)))
    fast = {"background_residual": [], "edge_errors": [], "both": [], "bfr_remnant": []}
    for k in range(a.draws):
        for name in fast:
            imp = {name: True} if name != "both" else {"background_residual": True, "edge_errors": True}
            sim = simulate(ph.brain_chi, ph.mask, geom, seed=[a.seed, k], imperfections=imp)
            # no noise: the simulated field is the brain's dipole field plus the imperfections
            fast[name].append(error_stats(sim.field - sim.clean_field * sim.mask, local, sim.mask, dist, vs))
    for name, stats in fast.items():
        med = {key: np.nanmedian(np.asarray([s[key] for s in stats]), axis=0) for key in stats[0]}
        lo = min(s["rms_pct"] for s in stats)
        hi = max(s["rms_pct"] for s in stats)
        label = "`background_residual` + `edge_errors`" if name == "both" else f"`{name}`"
        rows.append(_row(f"fast {label} (median of {a.draws}; {lo:.0f}-{hi:.0f} %)", med))
    m = ph.mask > 0
    rms_local = float((local[m] - local[m].mean()).double().square().mean().sqrt())
    print(f"Head seed {a.seed}, real-field profile, {a.voxel:g} mm, B0 tilt {a.tilt:g} deg; true local field "
          f"rms {1000 * rms_local:.1f} ppb in the brain mask.\n")
    shells = " / ".join(f"{lo:g}-{hi:g}" for lo, hi in SHELLS_MM).replace("-inf", "+")
    bands = " / ".join(f"{lo:g}-{hi:g}" for lo, hi in BANDS).replace("-inf", "+")
    print(f"| error model | rms (ppb) | % of local rms | rms by distance from the edge, {shells} mm (ppb) "
          f"| energy by band, {bands} cycles/mm (%) |")
    print("|---|---:|---:|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
