"""Linear-algebra helpers shared by solvers and unrolled networks: gradients and conjugate gradient.

Finite differences are forward differences with periodic boundaries, so they are diagonal in the
same FFT basis as the dipole kernel and closed-form solves (Tikhonov with gradient regularisation,
the linear ADMM-TV step) are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

_SPATIAL = (-3, -2, -1)


def gradient(x: torch.Tensor, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Forward-difference gradient with periodic boundary, scaled by voxel size.

    Args:
        x: (..., X, Y, Z) tensor.
        voxel_size: mm per voxel along each axis.

    Returns:
        (..., 3, X, Y, Z): d/dx, d/dy, d/dz in units of x per mm.
    """
    pairs = zip(_SPATIAL, voxel_size, strict=True)
    return torch.stack([(torch.roll(x, -1, dims=d) - x) / float(v) for d, v in pairs], dim=-4)


def gradient_adjoint(g: torch.Tensor, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Adjoint of :func:`gradient` (minus the backward-difference divergence).

    (..., 3, X, Y, Z) -> (..., X, Y, Z).
    """
    out = None
    for i, (d, v) in enumerate(zip(_SPATIAL, voxel_size, strict=True)):
        gi = g.select(-4, i)
        term = (torch.roll(gi, 1, dims=d) - gi) / float(v)
        out = term if out is None else out + term
    return out


def gradient_kernel(
    shape: Sequence[int],
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Half-spectrum symbol of ``gradient_adjoint(gradient(.))`` (a non-negative Laplacian).

    Returns:
        (X, Y, Z // 2 + 1) tensor: sum over axes of |exp(2 pi i k_d) - 1|^2 / voxel_d^2, the
        multiplier that matches :meth:`qsmnet.physics.DipoleOperator.filter`'s layout.
    """
    freqs = [np.fft.fftfreq(n) for n in shape[:2]] + [np.fft.rfftfreq(shape[2])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    lap = sum((2 - 2 * np.cos(2 * np.pi * f)) / float(v) ** 2 for f, v in zip(grids, voxel_size, strict=True))
    return torch.as_tensor(lap, dtype=dtype, device=device)


def conjugate_gradient(
    apply_A: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    max_iter: int = 50,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, int, float]:
    """Solve ``A x = b`` for a symmetric positive (semi-)definite ``A``, batched over dim 0.

    Differentiable (autograd flows through the iterations), so unrolled networks can use it for
    data consistency. Stops when every sample's residual ``||b - A x|| / ||b||`` is below ``tol``.

    Args:
        apply_A: the operator, mapping a tensor of b's shape to one of the same shape.
        b: right-hand side, (B, ...) .
        x0: initial guess (default zeros).
        max_iter: iteration cap.
        tol: relative residual at which to stop.

    Returns:
        (x, iterations run, final relative residual as a float: the batch maximum).
    """
    dims = tuple(range(1, b.dim())) if b.dim() > 1 else (0,)

    def dot(u, v):
        return (u * v).sum(dim=dims, keepdim=True)

    x = torch.zeros_like(b) if x0 is None else x0
    r = b - apply_A(x) if x0 is not None else b.clone()
    p = r.clone()
    rr = dot(r, r)
    bnorm = dot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    rel = float((rr.sqrt() / bnorm).max().detach())
    it = 0
    while it < max_iter and rel > tol:
        Ap = apply_A(p)
        alpha = rr / dot(p, Ap).clamp_min(torch.finfo(b.dtype).tiny)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny)) * p
        rr = rr_new
        it += 1
        rel = float((rr.sqrt() / bnorm).max().detach())
    return x, it, rel
