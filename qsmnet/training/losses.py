"""Training losses: masked L1 / L2 on chi, gradient difference, and the model (data-consistency) loss.

All terms are means over the voxels inside the mask, in ppm (or ppm/mm for gradients), so their
sizes do not depend on the patch size; :class:`QSMLoss` sums the weighted terms.
"""

from __future__ import annotations

import torch
from torch import nn

from qsmnet.physics import DipoleOperator, Geometry
from qsmnet.physics.linalg import gradient


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` (B, C, X, Y, Z) over the voxels where ``mask`` (B, 1, X, Y, Z) is set."""
    w = mask.expand_as(x)
    return (x * w).sum() / w.sum().clamp_min(1.0)


def l1_loss(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - truth| (ppm) inside the mask; all (B, 1, X, Y, Z)."""
    return _masked_mean((pred - truth).abs(), mask)


def l2_loss(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (pred - truth)^2 (ppm^2) inside the mask; all (B, 1, X, Y, Z)."""
    return _masked_mean((pred - truth) ** 2, mask)


def gradient_difference_loss(
    pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor, geometry=None
) -> torch.Tensor:
    """Mean |grad pred - grad truth| (ppm/mm) over voxels whose forward neighbours are all in the mask.

    Args:
        pred, truth, mask: (B, 1, X, Y, Z).
        geometry: optional B Geometries; their voxel sizes scale the differences (default 1 mm).
    """
    if geometry is None:
        sizes = [(1.0, 1.0, 1.0)] * pred.shape[0]
    else:
        geoms = [geometry] if isinstance(geometry, Geometry) else list(geometry)
        sizes = [g.voxel_size for g in geoms] * (pred.shape[0] // len(geoms))
    diffs = torch.stack([gradient(pred[b, 0] - truth[b, 0], sizes[b]) for b in range(pred.shape[0])])
    # A difference is valid only where both of its voxels are inside the mask (periodic wrap excluded).
    m = mask[:, 0]
    inside = torch.stack([m * torch.roll(m, -1, dims=d) for d in (-3, -2, -1)], dim=1)
    for i in range(3):
        inside[:, i].narrow(i + 1, inside.shape[i + 2] - 1, 1).zero_()
    return _masked_mean(diffs.abs(), inside)


def model_loss(pred: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, geometry, pad=0) -> torch.Tensor:
    """Data-consistency loss: mean |M (D * pred - f)| (ppm) inside the mask.

    Needs no ground truth, so it also works as a self-supervised term on measured data.

    Args:
        pred, field, mask: (B, 1, X, Y, Z) chi estimate (ppm), local field (ppm), mask.
        geometry: B Geometries (voxel size and B0 direction of each sample).
        pad: zero padding of the dipole operator (match how the network models the field).
    """
    geoms = [geometry] if isinstance(geometry, Geometry) else list(geometry)
    shape = tuple(pred.shape[-3:])
    geoms = [g if g.shape == shape else g.with_(shape=shape) for g in geoms]
    op = DipoleOperator(geoms, pad=pad).to(pred.device)
    return _masked_mean((op.A(pred) - field).abs(), mask)


class QSMLoss(nn.Module):
    """Weighted sum of the loss terms; a weight of 0 skips its term.

    Args:
        l1: weight of :func:`l1_loss`.
        l2: weight of :func:`l2_loss`.
        gradient: weight of :func:`gradient_difference_loss`.
        model: weight of :func:`model_loss` (data consistency).
        pad: dipole operator padding for the model loss.

    Calling it with ``(pred, batch)`` (a :class:`~qsmnet.data.QSMSample` or anything with
    ``field``, ``mask``, ``chi``, ``geometry``) returns ``(total, {term: value})``.
    """

    def __init__(self, l1: float = 1.0, l2: float = 0.0, gradient: float = 0.0, model: float = 0.0, pad=0):
        super().__init__()
        self.weights = {"l1": float(l1), "l2": float(l2), "gradient": float(gradient), "model": float(model)}
        if not any(self.weights.values()):
            raise ValueError("QSMLoss needs at least one non-zero weight")
        self.pad = pad

    def forward(self, pred: torch.Tensor, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        needs_truth = w["l1"] or w["l2"] or w["gradient"]
        if needs_truth and batch.chi is None:
            raise ValueError("supervised loss terms need batch.chi (set their weights to 0 otherwise)")
        terms: dict[str, torch.Tensor] = {}
        if w["l1"]:
            terms["l1"] = l1_loss(pred, batch.chi, batch.mask)
        if w["l2"]:
            terms["l2"] = l2_loss(pred, batch.chi, batch.mask)
        if w["gradient"]:
            terms["gradient"] = gradient_difference_loss(pred, batch.chi, batch.mask, batch.geometry)
        if w["model"]:
            terms["model"] = model_loss(pred, batch.field, batch.mask, batch.geometry, self.pad)
        total = sum(w[k] * v for k, v in terms.items())
        return total, terms
