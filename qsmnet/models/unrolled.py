"""Physics-informed unrolled networks that share the Foundation's :class:`DipoleOperator`.

Each forward builds the batch's operator from the samples' geometries (kernels are LRU-cached), so
one set of weights serves any B0 direction and voxel size. All start from a classical estimate
(closed-form Tikhonov by default, or a solver such as TV: ``init``, ``init_params``) and
alternate data consistency with a small learned CNN prior (see :mod:`qsmnet.models.common` for the
call signature and the fixed internal ``scale``).

- :class:`LPCNN`: learned proximal gradient, ``x <- R_k(x - a_k A^T M (A x - f))`` (Lai et al.,
  "Learned proximal networks for QSM", MICCAI 2020).
- :class:`VarNet`: variational network, ``x <- x - a_k A^T M (A x - f) - G_k(x)`` (Hammernik et al.
  2018): the prior's update runs in parallel with the gradient step instead of after it.
- :class:`MoDL`: ``x <- argmin ||M (A x - f)||^2 + mu ||x - R(x)||^2`` solved by a few conjugate
  gradient iterations, one CNN ``R`` shared by all iterations (Aggarwal et al., IEEE TMI 2019).
"""

from __future__ import annotations

import torch
from torch import nn

from qsmnet.physics.linalg import conjugate_gradient

from .common import InitialEstimate, ResidualCNN, inv_positive, make_operator, positive


class _Unrolled(InitialEstimate, nn.Module):
    """Shared set-up: initial estimate, denoisers, learned positive step sizes.

    Args:
        iterations: number of unrolled iterations K.
        features: hidden channels of each CNN.
        depth: convolutions per CNN.
        shared: one CNN for all iterations (True) or one per iteration (False).
        step_init: initial step size (or MoDL's ``mu``), learned per iteration.
        tik_lambda: Tikhonov weight of the initial estimate (fixed).
        scale: fixed factor from ppm to the CNNs' working units (see module docstring).
        pad: zero padding of the dipole operator (see :class:`~qsmnet.physics.DipoleOperator`);
            0 means circular convolution on the patch grid (fastest).
        act: activation class name from ``torch.nn``.
        init, init_params: the initial estimate (see :class:`~qsmnet.models.common.InitialEstimate`).
    """

    def __init__(
        self,
        iterations: int = 4,
        features: int = 16,
        depth: int = 4,
        shared: bool = False,
        step_init: float = 2.0,
        tik_lambda: float = 0.02,
        scale: float = 10.0,
        pad: int = 0,
        act: str = "LeakyReLU",
        init: str = "tikhonov",
        init_params: dict | None = None,
    ):
        super().__init__()
        self._set_init(init, init_params)
        if iterations < 1:
            raise ValueError("iterations must be >= 1")
        self.iterations = int(iterations)
        self.tik_lambda = float(tik_lambda)
        self.scale = float(scale)
        self.pad = pad
        n = 1 if shared else self.iterations
        # Input channels: the current estimate and the mask (so the prior knows where the border is).
        self.denoisers = nn.ModuleList(ResidualCNN(2, features, depth, act) for _ in range(n))
        self.step_raw = nn.Parameter(inv_positive(step_init).repeat(self.iterations))

    def denoiser(self, k: int) -> ResidualCNN:
        return self.denoisers[k % len(self.denoisers)]

    def prior(self, k: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """R_k applied to ``x`` (ppm) through the fixed scale."""
        return self.denoiser(k)(torch.cat([x * self.scale, mask], dim=1)) / self.scale

    def start(self, field, mask, geometry, init=None):
        op = make_operator(geometry, field, self.pad)
        x = self.initial_estimate(field, mask, geometry, op) if init is None else init * mask
        return op, field * mask, x

    @staticmethod
    def dc_grad(op, x, f, mask) -> torch.Tensor:
        """Gradient of 0.5 ||M (A x - f)||^2: ``A^T M (A x - f)``."""
        return op.A_adjoint(mask * (op.A(x) - f))


class LPCNN(_Unrolled):
    """Learned proximal gradient network (LPCNN-like); see :class:`_Unrolled` for the arguments."""

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry, init=None) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) (ppm, 0/1); geometry: B Geometries -> chi (B, 1, X, Y, Z) ppm;
        ``init``: precomputed initial estimate (None: computed here)."""
        op, f, x = self.start(field, mask, geometry, init)
        steps = positive(self.step_raw)
        for k in range(self.iterations):
            z = x - steps[k] * self.dc_grad(op, x, f, mask)
            x = self.prior(k, z, mask) * mask
        return x


class VarNet(_Unrolled):
    """Variational network: gradient step and learned regulariser update in parallel."""

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry, init=None) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) (ppm, 0/1); geometry: B Geometries -> chi (B, 1, X, Y, Z) ppm;
        ``init``: precomputed initial estimate (None: computed here)."""
        op, f, x = self.start(field, mask, geometry, init)
        steps = positive(self.step_raw)
        for k in range(self.iterations):
            reg = self.prior(k, x, mask) - x  # the CNN's residual acts as -grad of a learned regulariser
            x = (x - steps[k] * self.dc_grad(op, x, f, mask) + reg) * mask
        return x


class MoDL(_Unrolled):
    """MoDL: CG data consistency alternating with one shared CNN denoiser.

    Args:
        cg_iters: conjugate-gradient iterations per data-consistency step.
        mu_init: initial weight ``mu`` of the proximity term, learned per iteration.
        shared: defaults to True (MoDL's single denoiser); other arguments as :class:`_Unrolled`.
    """

    def __init__(
        self, iterations: int = 4, cg_iters: int = 5, mu_init: float = 0.1, shared: bool = True, **kw
    ):
        super().__init__(iterations=iterations, shared=shared, step_init=mu_init, **kw)
        self.cg_iters = int(cg_iters)

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry, init=None) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) (ppm, 0/1); geometry: B Geometries -> chi (B, 1, X, Y, Z) ppm;
        ``init``: precomputed initial estimate (None: computed here)."""
        op, f, x = self.start(field, mask, geometry, init)
        mus = positive(self.step_raw)
        atf = op.A_adjoint(mask * f)
        for k in range(self.iterations):
            z = self.prior(k, x, mask)
            mu = mus[k]

            def normal(v, mu=mu):
                return op.A_adjoint(mask * op.A(v)) + mu * v

            x, _, _ = conjugate_gradient(normal, atf + mu * z, x0=z, max_iter=self.cg_iters, tol=0.0)
            x = x * mask
        return x
