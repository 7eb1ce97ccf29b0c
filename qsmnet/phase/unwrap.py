"""Spatial phase unwrapping: least-squares (Laplacian) and quality-guided region growing.

- :func:`unwrap_laplacian`: the least-squares unwrapper of Ghiglia & Romero (JOSA A 1994). The
  discrete Laplacian of the unwrapped phase is estimated from *wrapped* neighbour differences
  (:func:`wrapped_laplacian`) and the Poisson equation is solved with Neumann boundaries by a
  cosine transform. Where the true phase changes by less than pi between neighbours everywhere
  (no residues) the answer is the true phase up to a constant; elsewhere it is the smooth
  least-squares compromise, which may differ from the data by other than multiples of 2 pi (it
  can lose a harmonic part, which background-field removal discards anyway). ``congruent=True``
  then snaps it to the nearest phase congruent with the data.
- :func:`unwrap_quality`: scikit-image's region-growing unwrapper (Herraez et al. 2002;
  Abdul-Rahman et al. 2007 in 3D), guided by second-difference reliability; it returns the data
  plus exact multiples of 2 pi, one constant per connected region of the mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ._util import as_tensor, wrap


def _wrapped_diffs(phase: torch.Tensor) -> list[torch.Tensor]:
    return [wrap(torch.diff(phase, dim=d)) for d in range(3)]


def wrapped_laplacian(phase, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> torch.Tensor:
    """Discrete Laplacian (rad/mm^2) of the unwrapped phase, estimated from wrapped differences.

    The 7-point Laplacian with Neumann (mirror) boundaries, ``sum_d (g_d[i] - g_d[i-1]) / h_d^2``
    with ``g_d`` the neighbour difference along axis d wrapped to [-pi, pi) (0 across the
    boundary). It equals the Laplacian of the true phase wherever no true neighbour difference
    exceeds pi.

    Args:
        phase: (X, Y, Z) wrapped phase (rad), tensor or array.
        voxel_size: voxel size (mm).

    Returns:
        (X, Y, Z) float32 tensor on the phase's device.
    """
    p = as_tensor(phase)
    out = torch.zeros_like(p)
    for d, (g, h) in enumerate(zip(_wrapped_diffs(p), voxel_size, strict=True)):
        zero = torch.zeros_like(p.narrow(d, 0, 1))
        gp = torch.cat([g, zero], dim=d)  # g[i] = phi[i+1] - phi[i]
        gm = torch.cat([zero, g], dim=d)  # g[i-1]
        out += (gp - gm) / float(h) ** 2
    return out


def _neumann_symbol(shape, voxel_size, device, half_last: bool, mirrored: bool) -> torch.Tensor:
    axes = []
    for i, (n, h) in enumerate(zip(shape, voxel_size, strict=True)):
        m = 2 * n if mirrored else n
        k = torch.arange(m // 2 + 1 if (half_last and i == 2) else m, dtype=torch.float64, device=device)
        axes.append((2 * torch.cos(2 * math.pi * k / m) - 2) / float(h) ** 2)
    return axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]


def solve_poisson_neumann(
    rhs: torch.Tensor, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *, use_fft: bool | None = None
) -> torch.Tensor:
    """Zero-mean solution u of ``Laplacian(u) = rhs`` with Neumann (mirror) boundaries.

    The 7-point Laplacian with mirror boundaries is diagonal in the DCT-II basis. On the CPU this
    uses :func:`scipy.fft.dctn`; elsewhere (or with ``use_fft=True``) the equivalent FFT of the
    mirror-extended volume (8x the memory), on the tensor's device.

    Args:
        rhs: (X, Y, Z) tensor; its mean (the part with no Neumann solution) is ignored.
        voxel_size: voxel size (mm).
        use_fft: force the mirrored-FFT path (True) or the scipy DCT (False); None: by device.

    Returns:
        (X, Y, Z) float32 tensor on rhs's device, with zero mean.
    """
    device = rhs.device
    if use_fft is None:
        use_fft = device.type != "cpu"
    if not use_fft:
        from scipy import fft as sfft

        r = rhs.detach().cpu().numpy().astype(np.float64)
        c = sfft.dctn(r, type=2, norm="ortho", workers=torch.get_num_threads())
        lam = _neumann_symbol(r.shape, voxel_size, "cpu", False, True).numpy()
        lam = lam[: r.shape[0], : r.shape[1], : r.shape[2]]  # DCT index k <-> mirrored frequency k
        lam[0, 0, 0] = 1.0
        c /= lam
        c[0, 0, 0] = 0.0
        u = sfft.idctn(c, type=2, norm="ortho", workers=torch.get_num_threads())
        return torch.from_numpy(u.astype(np.float32)).to(device)
    x = rhs.to(torch.float32)
    ext = x
    for d in range(3):
        ext = torch.cat([ext, ext.flip(d)], dim=d)
    F = torch.fft.rfftn(ext)
    lam = _neumann_symbol(x.shape, voxel_size, device, True, True).to(torch.float32)
    lam[0, 0, 0] = 1.0
    F = F / lam
    F[0, 0, 0] = 0
    u = torch.fft.irfftn(F, s=ext.shape)
    return u[: x.shape[0], : x.shape[1], : x.shape[2]].contiguous()


def unwrap_laplacian(
    phase, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *, mask=None, congruent: bool = False
) -> torch.Tensor:
    """Least-squares (Laplacian) phase unwrapping (see the module docstring).

    Args:
        phase: (X, Y, Z) wrapped phase (rad), tensor or array (any device).
        voxel_size: voxel size (mm).
        mask: optional (X, Y, Z) region; the phase is set to 0 outside it first (noise outside a
            brain is full of residues that would spread into it) and the answer is 0 there.
        congruent: add to the wrapped data the multiple of 2 pi nearest the least-squares answer,
            so the result differs from the data by exact multiples of 2 pi.

    Returns:
        (X, Y, Z) float32 unwrapped phase (rad) on the phase's device, zero-mean over the grid
        (before masking) unless ``congruent``.
    """
    p = as_tensor(phase)
    m = None if mask is None else as_tensor(mask, device=p.device) != 0
    if m is not None:
        p = torch.where(m, p, torch.zeros_like(p))
    u = solve_poisson_neumann(wrapped_laplacian(p, voxel_size), voxel_size)
    if congruent:
        u = p + 2 * math.pi * torch.round((u - p) / (2 * math.pi))
    return u if m is None else torch.where(m, u, torch.zeros_like(u))


def unwrap_quality(phase, mask=None, *, seed: int = 0) -> torch.Tensor:
    """Exact region-growing unwrapping with scikit-image (:func:`skimage.restoration.unwrap_phase`).

    Voxels are joined in order of reliability (small second differences first), so each output
    voxel equals the input plus an exact multiple of 2 pi. Runs on the CPU.

    Args:
        phase: (X, Y, Z) wrapped phase (rad) in [-pi, pi], tensor or array.
        mask: optional (X, Y, Z) region to unwrap (non-zero inside); outside it the answer is 0.
            Each connected component is unwrapped with its own arbitrary multiple of 2 pi.
        seed: seed of scikit-image's random tie-breaking (results are deterministic).

    Returns:
        (X, Y, Z) float32 unwrapped phase (rad) on the phase's device.
    """
    from skimage.restoration import unwrap_phase

    p = as_tensor(phase)
    a = p.detach().cpu().numpy().astype(np.float64)
    a = np.clip(a, -np.pi, np.pi)  # float32 data can stray a rounding error past pi
    if mask is None:
        u = unwrap_phase(a, rng=seed)
    else:
        m = as_tensor(mask, dtype=torch.bool).cpu().numpy()
        if not m.any():
            return torch.zeros_like(p)
        u = np.ma.filled(unwrap_phase(np.ma.masked_array(a, ~m), rng=seed), 0.0)
        u = np.where(m, u, 0.0)
    return torch.from_numpy(np.asarray(u, dtype=np.float32)).to(p.device)
