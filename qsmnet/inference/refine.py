"""Test-time refinement: a few Adam steps on a copy of a network, minimising data inconsistency.

The loss needs no ground truth: ``||M (A chi - f)||^2 / ||M f||^2`` with ``chi = net(f, M, geometry)``
and ``A`` the dipole operator of the grid the network runs on (unpadded, like the networks' own).
When the whole volume does not fit in memory for gradient steps, each step uses one window (a
random one among those holding mask voxels) and scores only its interior, away from the window
edges where the circular model is wrong about the field of sources outside the window.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qsmnet.physics import DipoleOperator, Geometry

from . import windows as W
from .runner import run_network, whole_volume_init


def dc_loss(chi: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, geometry: Geometry) -> torch.Tensor:
    """Relative squared data-consistency residual ``||M (A chi - f)||^2 / ||M f||^2`` (unitless).

    chi, field, mask: (B, 1, X, Y, Z) (ppm, ppm, 0/1); ``geometry`` describes their grid.
    """
    op = DipoleOperator(geometry.with_(shape=tuple(chi.shape[-3:]))).to(chi.device)
    return (op.residual(chi, field, mask) ** 2).mean()


def refine_network(
    net: nn.Module,
    field: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    steps: int,
    lr: float = 1e-4,
    window="auto",
    max_memory: float | None = None,
    overlap: float = W.DEFAULT_OVERLAP,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``net`` on one subject's data consistency.

    Args:
        net: the loaded network (left unchanged).
        field, mask: (1, 1, X, Y, Z) local field (ppm, zero outside the mask) and 0/1 mask.
        geometry: the grid's geometry.
        steps: Adam steps (>= 1).
        lr: Adam learning rate.
        window, max_memory, overlap: as :func:`qsmnet.inference.windows.plan` (for training memory).
        seed: seed of the window choice.
        init: the network's whole-volume initial estimate when already computed (networks with
            ``precomputed_init``; else computed here).

    Returns:
        ``(refined copy in eval mode, {"refine": {"steps", "lr", "mode", "residual_before",
        "residual_after"}})``, residuals ``||M (A chi - f)|| / ||M f||`` of the whole volume.
    """
    p_inf = W.plan(net, geometry.shape, field.device, window, max_memory)
    init = whole_volume_init(net, field, mask, geometry, init)  # whole volume once, then windowed
    before = residual_of(net, field, mask, geometry, p_inf, overlap, init)
    p = W.plan(net, geometry.shape, field.device, window, max_memory, train=True)
    tuned = copy.deepcopy(net).to(field.device)
    tuned.eval()  # keep dropout / normalisation statistics as trained
    for q in tuned.parameters():
        q.requires_grad_(True)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    starts = _window_starts(mask, p["roi"]) if p["mode"] == "windows" else None
    for _ in range(int(steps)):
        opt.zero_grad(set_to_none=True)
        if starts is None:
            f, m, inner, i0 = field, mask, mask, init
        else:
            s = starts[int(torch.randint(len(starts), (1,), generator=gen))]
            sl = (..., *(slice(a, a + r) for a, r in zip(s, p["roi"], strict=True)))
            f, m = field[sl], mask[sl]
            i0 = None if init is None else init[sl]
            inner = m * _interior(p["roi"], m)
        chi = tuned(f, m, geometry) if i0 is None else tuned(f, m, geometry, init=i0)
        loss = dc_loss(chi * m, f, inner, geometry)
        loss.backward()
        opt.step()
    for q in tuned.parameters():
        q.requires_grad_(False)
    after = residual_of(tuned, field, mask, geometry, p_inf, overlap, init)
    return tuned, {
        "refine": {
            "steps": int(steps),
            "lr": lr,
            "mode": p["mode"],
            "residual_before": before,
            "residual_after": after,
        }
    }


def residual_of(net, field, mask, geometry, p, overlap, init=None) -> float:
    """Relative residual ``||M (A net(f) - f)|| / ||M f||`` of ``net``'s whole-volume output."""
    chi = run_network(net, field, mask, geometry, p, overlap, init=init)
    with torch.no_grad():
        return float(dc_loss(chi, field, mask, geometry).sqrt())


def _window_starts(mask: torch.Tensor, roi) -> list[tuple[int, int, int]]:
    """Corners of a half-overlapping window grid, keeping windows with mask voxels."""
    shape = mask.shape[-3:]
    axes = []
    for n, r in zip(shape, roi, strict=True):
        step = max(1, r // 2)
        a = list(range(0, max(n - r, 0) + 1, step))
        if a[-1] != max(n - r, 0):
            a.append(n - r)
        axes.append(a)
    starts = [(i, j, k) for i in axes[0] for j in axes[1] for k in axes[2]]
    keep = [s for s in starts if mask[(..., *(slice(a, a + r) for a, r in zip(s, roi, strict=True)))].any()]
    return keep or starts


def _interior(roi, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, *roi) 0/1 weight that drops a margin of a quarter window at every face."""
    w = torch.zeros_like(like)
    m = [r // 4 for r in roi]
    w[..., m[0] : roi[0] - m[0], m[1] : roi[1] - m[1], m[2] : roi[2] - m[2]] = 1
    return w
