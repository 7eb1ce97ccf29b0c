"""Pieces shared by the networks: geometry handling, the initial estimate, a small CNN.

Every network answers ``net(field, mask, geometry) -> chi`` with

    field: (B, 1, X, Y, Z) local field in ppm,
    mask:  (B, 1, X, Y, Z) brain mask (0/1),
    geometry: one :class:`~qsmnet.physics.Geometry` per sample (a tuple of B; a single Geometry is
        accepted for B = 1 or for a batch sharing one geometry),
    chi:   (B, 1, X, Y, Z) susceptibility in ppm, zero outside the mask.

Scaling: fields are ~0.01-0.1 ppm, so the CNN parts work on ``scale * ppm`` (a fixed, configured
factor, default 10, so that typical brain values are O(1)); the data-consistency parts work in ppm.
No per-sample statistics are used, so a network's output is linear in nothing but its physics and
its behaviour does not depend on the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from qsmnet.physics import DipoleOperator, Geometry, geometry_list


def as_geometries(geometry: Geometry | Sequence[Geometry], field: torch.Tensor) -> list[Geometry]:
    """One Geometry per batch sample, with the shape checked against ``field`` (B, 1, X, Y, Z)."""
    if field.dim() != 5 or field.shape[1] != 1:
        raise ValueError(f"field must be (B, 1, X, Y, Z), got {tuple(field.shape)}")
    # The network sees the tensor it is given (a patch may be cut from a larger volume): only
    # voxel size and B0 direction matter, so take the shape from the tensor.
    return list(geometry_list(geometry, field.shape[0], field.shape[-3:]))


def make_operator(geometry, field: torch.Tensor, pad=0) -> DipoleOperator:
    """A :class:`DipoleOperator` for the batch ``field``'s geometries, on its device."""
    geoms = as_geometries(geometry, field)
    if all(g == geoms[0] for g in geoms):
        geoms = geoms[:1]  # one kernel broadcasts over the batch
    return DipoleOperator(geoms, pad=pad).to(field.device)


def tikhonov(op: DipoleOperator, field: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Closed-form Tikhonov estimate ``argmin ||A x - f||^2 + lam ||x||^2 = F^-1[D/(D^2+lam) F f]``.

    Args:
        op: the batch's operator.
        field: (B, 1, X, Y, Z) field in ppm (masked by the caller).
        lam: regularisation weight (> 0); a tensor keeps it learnable.

    Returns:
        (B, 1, X, Y, Z) chi estimate in ppm. It uses each sample's B0 direction and voxel size,
        which is what makes the networks geometry-aware.
    """
    d = op.kernel
    return op.filter(field, d / (d * d + lam))


def residual_guide(field: torch.Tensor, mask: torch.Tensor, geometry, est: torch.Tensor, lam: float,
                   pad=0, op: DipoleOperator | None = None) -> torch.Tensor:
    """What the data still say about ``est``: the closed-form Tikhonov solution of its field residual,
    ``F^-1[D/(D^2+lam) F M (f - A est)]`` (ppm, zero outside the mask).

    A regularised solver (TV) leaves signal in its residual wherever the prior overrode the data
    (lost texture, flattened contrast) and only noise where it did not; this channel shows a
    network both, filtered by each sample's own dipole kernel (geometry-aware), and so also how
    noisy the sample is. It is a whole-volume quantity (the dipole field is nonlocal): compute it
    before cutting patches or windows.

    Args:
        field, mask, est: (B, 1, X, Y, Z) field (ppm), 0/1 mask, estimate (ppm).
        geometry: one Geometry per sample (or one for all).
        lam: Tikhonov weight of the filter (> 0).
        pad: zero padding of the dipole operator.
        op: the batch's operator when the caller already has it (else built from ``geometry``).
    """
    op = make_operator(geometry, field, pad) if op is None else op
    r = (field - op.A(est.to(field.dtype))) * mask
    return tikhonov(op, r, lam) * mask


def closed_form_init(init: str | None, init_params: dict | None) -> bool:
    """Whether a network's ``init``/``init_params`` name the closed form computed inside the model
    (``"tikhonov"`` with no parameters) rather than a solver run on the whole volume."""
    return init == "tikhonov" and not init_params


class InitialEstimate:
    """Mixin: the classical estimate a network starts from.

    ``init="tikhonov"`` with no ``init_params`` is the closed form with the network's ``tik_lambda``
    (cheap, differentiable, computed inside ``forward`` on whatever patch or window it is given).
    Any other name, or ``"tikhonov"`` with parameters, is that solver of
    :data:`qsmnet.solvers.SOLVERS` (e.g. ``"tv"`` with ``init_params={"lam": 5e-5}``, or
    ``"tikhonov"`` with ``{"lam": "auto"}``: λ chosen per subject), run without gradients. Such a
    solver's estimate must be the whole volume's: training on patches takes it precomputed
    (``forward(..., init=...)``, :class:`qsmnet.data.PrecomputedDataset`) and inference computes it
    before any sliding window (:attr:`precomputed_init`), so both see the same input.

    ``guide_lambda`` (networks that take it, :class:`~qsmnet.models.QSMUNet`): the estimate comes
    with a second channel, :func:`residual_guide` with that Tikhonov weight, so ``init`` tensors are
    (B, :attr:`init_channels`, X, Y, Z): channel 0 the estimate, then the guide.
    """

    init: str = "tikhonov"
    init_params: dict
    tik_lambda: float
    pad: int
    guide_lambda: float | None = None

    def _set_init(self, init: str, init_params: dict | None, guide_lambda: float | None = None) -> None:
        self.init = str(init)
        self.init_params = dict(init_params or {})
        if guide_lambda is not None and not float(guide_lambda) > 0:
            raise ValueError(f"guide_lambda must be > 0 or None, got {guide_lambda}")
        self.guide_lambda = None if guide_lambda is None else float(guide_lambda)
        if not self.closed_form_init:
            from qsmnet.solvers import SOLVERS

            if self.init not in SOLVERS:
                raise ValueError(f"init must be 'tikhonov' or one of {sorted(SOLVERS)}, got {init!r}")

    @property
    def closed_form_init(self) -> bool:
        """True when the estimate is the in-model closed form (``init="tikhonov"``, no parameters)."""
        return closed_form_init(self.init, self.init_params)

    @property
    def precomputed_init(self) -> bool:
        """True when the initial estimate is a solver's or guided: compute it once on the whole volume."""
        return not self.closed_form_init or self.guide_lambda is not None

    @property
    def init_channels(self) -> int:
        """Channels of the ``init`` tensor: the estimate, plus the residual guide if any."""
        return 1 if self.guide_lambda is None else 2

    def initial_estimate(self, field: torch.Tensor, mask: torch.Tensor, geometry,
                         op: DipoleOperator | None = None) -> torch.Tensor:
        """The starting estimate, (B, :attr:`init_channels`, X, Y, Z) ppm, zero outside the mask."""
        f = field * mask
        if self.closed_form_init:
            op = make_operator(geometry, field, self.pad) if op is None else op
            est = tikhonov(op, f, self.tik_lambda) * mask
        else:
            from qsmnet.solvers import SOLVERS

            with torch.no_grad():
                geoms = as_geometries(geometry, field)
                est = SOLVERS[self.init](f.float(), mask.float(), geoms, **self.init_params)
            est = est.to(field.dtype) * mask
        return self.guide(field, mask, geometry, est, op=op)

    def guide(self, field: torch.Tensor, mask: torch.Tensor, geometry, est: torch.Tensor,
              op: DipoleOperator | None = None) -> torch.Tensor:
        """The ``init`` tensor from an estimate ``est`` (B, 1, X, Y, Z) ppm: ``est`` itself, or with
        ``guide_lambda`` set, ``est`` and its :func:`residual_guide` (B, 2, X, Y, Z)."""
        if self.guide_lambda is None:
            return est
        with torch.no_grad():
            g = residual_guide(field * mask, mask, geometry, est, self.guide_lambda, self.pad, op=op)
        return torch.cat([est, g], dim=1)


class ResidualCNN(nn.Module):
    """Small residual CNN denoiser ``x -> x + conv_net(x)``: the learned prior of the unrolled nets.

    Args:
        in_channels: channels of the input (1 for a chi estimate, more for extra guidance).
        features: channels of the hidden layers.
        depth: number of 3x3x3 convolutions (>= 2).
        act: activation, a ``torch.nn`` class name (e.g. "LeakyReLU", "ReLU", "GELU").

    The residual is added to the first input channel; the output has one channel.
    The last layer starts at zero, so an untrained block is the identity.
    """

    def __init__(self, in_channels: int = 1, features: int = 16, depth: int = 4, act: str = "LeakyReLU"):
        super().__init__()
        if depth < 2:
            raise ValueError("ResidualCNN needs depth >= 2")
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(depth - 1):
            layers += [nn.Conv3d(ch, features, 3, padding=1), getattr(nn, act)()]
            ch = features
        last = nn.Conv3d(ch, 1, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, X, Y, Z) -> (B, 1, X, Y, Z)."""
        return x[:, :1] + self.body(channels_last(x)).contiguous()


def channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` (B, C, X, Y, Z) in channels-last memory order: on CPU the weight gradients of 3D
    convolutions are ~3x faster in this layout (oneDNN), and cuDNN supports it too."""
    return x.contiguous(memory_format=torch.channels_last_3d)


def positive(raw: torch.Tensor) -> torch.Tensor:
    """Softplus: an unconstrained parameter mapped to a positive value (step sizes, weights)."""
    return nn.functional.softplus(raw)


def inv_positive(value: float) -> torch.Tensor:
    """Inverse of :func:`positive`, to initialise a raw parameter at ``value``."""
    v = torch.tensor(float(value))
    return v + torch.log(-torch.expm1(-v))
