"""How much of a simulated local field the dipole model of the scalar truth fails to explain.

For each tier: ``||f - D chi|| / ||f||`` inside the (BFR-eroded) brain mask, both demeaned, and the
share of the residual's and the field's energy in spatial-frequency bands (cycles/mm), next to
the figures measured on a real 3 T in vivo field (issue 15). Usage:

    OMP_NUM_THREADS=2 python scripts/realism_report.py [--voxel 2] [--seed 0] [--snr 100] \\
        [--profile real-field]

``--profile real-field`` simulates the head with :data:`qsmnet.sim.head.REAL_FIELD_PROFILE` (and,
unless ``--snr`` is given, :data:`qsmnet.sim.head.REAL_FIELD_SNR`).

``--cosmos N`` adds the measure the real figures were taken with: the real field's reference is
COSMOS, itself reconstructed from background-removed fields at several head orientations, so
it absorbs whatever part of the pipeline's errors a scalar chi can explain at every orientation.
The same head is acquired and V-SHARP'd at N orientations (axial and N - 1 tilts of 25 degrees
about evenly spread axes in the axial plane), COSMOS is solved in its usual k-space closed form
and kept in the common mask, and the axial field is scored against it. 1 mm and N = 7 take
~10 min on 2 threads.

``--benchmark DIR`` simulates nothing: it reports every head case of a written benchmark v2
(``qsmnet simulate --benchmark-v2 -o DIR``), the field std in the mask included, one row per case:

    python scripts/realism_report.py --benchmark data/benchmark_v2

The realistic tier's background-field removal is a parameter (``bfr(total_ppm, mask, voxel_size)
-> (local, mask)``); the default is :func:`qsmnet.phase.vsharp`, the pipeline's own.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from qsmnet.phase import vsharp as _vsharp
from qsmnet.physics import dipole_kernel, forward_field, next_fast_len
from qsmnet.sim.acquire import DEFAULT_SNR, HEAD_PROFILES, acquire, head_fields, oblique_bandlimit
from qsmnet.sim.head import REAL_FIELD_SNR, head_phantom

BANDS = ((0.0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, math.inf))
REAL = {"unexplained": "56-68 %", "residual_bands": (22, 13, 15, 12, 26), "field_bands": (33, 17, 16, 11, 18)}


def k_magnitude(shape, voxel_size) -> torch.Tensor:
    """|k| (cycles/mm) of every sample of an unshifted FFT grid."""
    k = torch.meshgrid(*[torch.fft.fftfreq(n, d=v) for n, v in zip(shape, voxel_size, strict=True)],
                       indexing="ij")
    return torch.sqrt(sum(c.square() for c in k))


def band_shares(x: torch.Tensor, voxel_size) -> list[float]:
    """Percent of ``sum |X(k)|^2`` in each of :data:`BANDS` (|k| in cycles/mm)."""
    spec = torch.fft.fftn(x.double()).abs().square()
    kn = k_magnitude(x.shape, voxel_size)
    tot = float(spec.sum())
    return [100 * float(spec[(kn >= lo) & (kn < hi)].sum()) / tot for lo, hi in BANDS]


def unexplained(f, chi, mask, voxel_size, b0_dir):
    """(fraction, residual band shares, field band shares) inside ``mask`` (demeaned)."""
    m = mask > 0
    d = forward_field(chi.double(), voxel_size, b0_dir, pad=True, dtype=torch.float64)
    f = (f.double() - f.double()[m].mean()) * m
    d = (d - d[m].mean()) * m
    res = f - d
    return float(res.norm() / f.norm()), band_shares(res, voxel_size), band_shares(f, voxel_size)


def cosmos_orientations(n: int, tilt_deg: float = 25.0) -> list[tuple[float, float, float]]:
    """B0 directions (voxel axes) of a COSMOS acquisition: axial, then ``n - 1`` tilts by
    ``tilt_deg`` about axes evenly spread in the axial plane."""
    t = math.radians(tilt_deg)
    out = [(0.0, 0.0, 1.0)]
    for i in range(n - 1):
        a = math.pi * i / max(n - 1, 1)  # rotation axis azimuth; +/- tilts are distinct axes
        a = a if i % 2 == 0 else a + math.pi
        out.append((math.sin(t) * math.cos(a), math.sin(t) * math.sin(a), math.cos(t)))
    return out


def cosmos(fields, mask, voxel_size, b0_dirs, margin: int = 32) -> torch.Tensor:
    """COSMOS in its usual closed form: ``X = sum_o D_o F_o / sum_o D_o^2`` in k-space (the masked
    fields zero-padded by ``margin`` voxels around the mask's box), chi kept in ``mask``. k where
    ``sum_o D_o^2`` < 1e-3 (k = 0 and near it) are set to zero."""
    m = mask > 0
    idx = m.nonzero()
    box = tuple(slice(max(0, int(a) - margin), min(n, int(b) + margin + 1))
                for a, b, n in zip(idx.min(0).values, idx.max(0).values, m.shape, strict=True))
    mb = m[box].double()
    shape = tuple(next_fast_len(n + 2 * margin) for n in mb.shape)
    num = torch.zeros(shape[:2] + (shape[2] // 2 + 1,), dtype=torch.complex128)
    den = torch.zeros(num.shape, dtype=torch.float64)
    for f, b in zip(fields, b0_dirs, strict=True):
        d = dipole_kernel(shape, voxel_size, b, half=True, dtype=torch.float64)
        num += d * torch.fft.rfftn(f[box].double() * mb, s=shape)
        den += d * d
    x = torch.where(den > 1e-3, num / den.clamp_min(1e-3), torch.zeros_like(num))
    chi = torch.fft.irfftn(x, s=shape)[tuple(slice(0, n) for n in mb.shape)]
    out = torch.zeros(m.shape)
    out[box] = (chi * mb).float()
    return out


def _bands(v) -> str:
    return " / ".join(f"{x:.0f}" for x in v)


def _real_row(extra: str = "") -> str:
    return (f"| real 3 T in vivo (issue 15) | {REAL['unexplained']} | {_bands(REAL['residual_bands'])} | "
            f"{_bands(REAL['field_bands'])} |{extra}")


def benchmark_report(root) -> None:
    """Print the realism row of every non-clean case of a benchmark v2 folder."""
    from qsmnet.data import load_benchmark

    print("| case | unexplained | residual bands % | field bands % | field std (ppm) |")
    print("|---|---|---|---|---|")
    for name, s in load_benchmark(root):
        if s.meta["case"].get("tier", "clean") == "clean":
            continue
        g = s.geometry[0]
        f, chi, m = s.field[0], s.chi[0], s.mask[0]
        u, rb, fb = unexplained(f, chi, m, g.voxel_size, g.b0_dir)
        std = float(f[m > 0].double().std())
        print(f"| {name} | {100 * u:.1f} % | {_bands(rb)} | {_bands(fb)} | {std:.4f} |")
    print(_real_row(" 0.011 |"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voxel", type=float, default=2.0, help="mm (1 is the real size grid; 2 is 8x cheaper)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--snr", type=float, default=None, help=f"default {DEFAULT_SNR:g} ({REAL_FIELD_SNR:g} "
                    "with --profile real-field)")
    ap.add_argument("--profile", choices=tuple(HEAD_PROFILES), default="generator",
                    help="head phantom settings: the generator's defaults or REAL_FIELD_PROFILE")
    ap.add_argument("--cosmos", type=int, default=0, metavar="N",
                    help="also score the realistic field against a COSMOS reference from N orientations")
    ap.add_argument("--benchmark", metavar="DIR", default=None,
                    help="report the head cases of a written benchmark v2 instead of simulating")
    a = ap.parse_args(argv)
    if a.benchmark is not None:
        torch.set_num_threads(2)
        return benchmark_report(a.benchmark)
    profile, profile_snr = HEAD_PROFILES[a.profile]
    if a.snr is None:
        a.snr = profile_snr
    torch.set_num_threads(2)
    vs = (a.voxel,) * 3
    shape = tuple(int(round(n / a.voxel)) for n in (192, 224, 192))
    b0 = (0.0, 0.0, 1.0)
    rng = np.random.default_rng(a.seed)
    ph = head_phantom(shape, vs, rng, **profile)
    rows = {}
    _, iso = head_fields(ph, vs, b0, anisotropy=False, micro=False)
    rows["head, scalar chi, no noise"] = unexplained(iso, ph.brain_chi, ph.mask, vs, b0)
    total, local = head_fields(ph, vs, b0)
    rows["head, + anisotropy, hollow cylinder, texture offset"] = unexplained(
        local, ph.brain_chi, ph.mask, vs, b0
    )
    acq = acquire(total, ph.m0, ph.r2star, vs, rng, snr=a.snr)
    loc, er = _vsharp(acq.field, ph.mask, vs)
    rows[f"realistic: echo fit (SNR {a.snr:g}) + V-SHARP"] = unexplained(loc, ph.brain_chi, er, vs, b0)
    if a.cosmos > 1:
        b0s = cosmos_orientations(a.cosmos)
        fields = [loc]
        for b in b0s[1:]:
            tot_o, _ = head_fields(ph, vs, b, bandlimit=oblique_bandlimit(b))
            loc_o, er_o = _vsharp(acquire(tot_o, ph.m0, ph.r2star, vs, rng, snr=a.snr).field, ph.mask, vs)
            fields.append(loc_o)
            er = er & er_o
        ref = cosmos(fields, er, vs, b0s)
        rows[f"realistic, against COSMOS of the same pipeline ({a.cosmos} orientations)"] = unexplained(
            loc, ref, er, vs, b0
        )
    tot_iso, _ = head_fields(ph, vs, b0, anisotropy=False, micro=False)
    loc_i, er_i = _vsharp(tot_iso, ph.mask, vs)
    rows["scalar head, no noise, V-SHARP"] = unexplained(loc_i, ph.brain_chi, er_i, vs, b0)
    print(f"| tier ({a.voxel:g} mm, seed {a.seed}) | unexplained | residual bands % | field bands % |")
    print("|---|---|---|---|")
    for name, (u, rb, fb) in rows.items():
        print(
            f"| {name} | {100 * u:.1f} % | {_bands(rb)} | {_bands(fb)} |"
        )
    print(_real_row())


if __name__ == "__main__":
    main()
