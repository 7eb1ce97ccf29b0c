"""A minimal V-SHARP, PRIVATE to the simulation until :func:`qsmnet.phase.vsharp` is merged.

The benchmark v2 and ``scripts/realism_report.py`` take the background-field removal as a
parameter ``bfr(total_ppm, mask, voxel_size) -> (local, mask)``; this is its stand-in (sim may
not import phase). Each voxel takes the largest spherical-mean-value radius whose sphere lies in
the mask; the result is deconvolved by the largest kernel (truncated below ``thr``) and demeaned
in the mask eroded by the smallest radius.
"""

from __future__ import annotations

import torch


def vsharp(total, mask, voxel_size, radii=(12.0, 10.0, 8.0, 6.0, 4.0, 3.0, 2.0), thr=0.05):
    """Minimal V-SHARP: per voxel the largest sphere inside the mask, deconvolved by the largest."""
    m = mask > 0
    radii = sorted((float(r) for r in radii), reverse=True)
    shape = tuple(int(n + 2 * (radii[0] // v + 1)) for n, v in zip(total.shape, voxel_size, strict=True))
    grid = [torch.fft.fftfreq(n, d=1.0 / n) for n in shape]  # integer offsets, wrapped
    r2 = sum(
        (g[(slice(None),) + (None,) * (2 - i)] * v) ** 2
        for i, (g, v) in enumerate(zip(grid, voxel_size, strict=True))
    )
    F = torch.fft.rfftn((total * m).double(), s=shape)
    M = torch.fft.rfftn((~m).double(), s=shape)  # the grid's padding counts as inside here: it is zero
    sl = tuple(slice(0, n) for n in total.shape)
    out = torch.zeros(total.shape, dtype=torch.float64)
    done = torch.zeros_like(m)
    k_big = None
    for r in radii:
        ball = (r2 <= r * r).double()
        K = torch.fft.rfftn(ball / ball.sum())
        fits = (torch.fft.irfftn(M * K, s=shape)[sl] < 1e-3) & m
        if not bool(fits.any()):
            continue
        k_big = K if k_big is None else k_big
        new = fits & ~done
        out[new] = torch.fft.irfftn(F * (1 - K), s=shape)[sl][new]
        done |= fits
        er = fits
    hp = 1 - k_big.real
    inv = torch.where(hp.abs() >= thr, 1 / hp, torch.zeros_like(hp))
    local = torch.fft.irfftn(torch.fft.rfftn(out * er, s=shape) * inv, s=shape)[sl]
    local = (local - local[er].mean()) * er
    return local.float(), er.float()
