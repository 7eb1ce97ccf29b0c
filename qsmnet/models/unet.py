"""3D U-Net (MONAI blocks) refining a geometry-aware classical estimate (Tikhonov or TV)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

from .common import InitialEstimate, channels_last


class QSMUNet(InitialEstimate, nn.Module):
    """U-Net that predicts a residual on a classical estimate of chi.

    Inputs to the U-Net are three channels: ``scale * field``, ``scale * estimate`` and the mask,
    plus ``scale * guide`` with ``guide_lambda`` set (:func:`~qsmnet.models.common.residual_guide`:
    what the data still say about the estimate).
    The estimate (closed-form Tikhonov by default, or any registered solver such as ``"tv"``) uses
    each sample's B0 direction and voxel size, which is how a network with no physics inside copes
    with any orientation and resolution. Inputs of any size are zero-padded to a multiple of the
    U-Net's downsampling factor and cropped back.

    An iterative estimate (``init="tv"``) is computed once on the whole volume, without gradients;
    training on patches therefore passes it in precomputed (``forward(..., init=...)``, see
    :class:`qsmnet.data.PrecomputedDataset`) and inference computes it before any sliding window
    (:attr:`precomputed_init`).

    Args:
        channels: feature channels per level (MONAI ``UNet``).
        strides: downsampling stride between levels (``len(channels) - 1`` of them).
        num_res_units: residual units per block (MONAI).
        norm: MONAI norm spec, e.g. ``None`` (default: keeps the output linear in the input
            scale) or ``["instance", {"affine": true}]``.
        act: MONAI activation spec.
        dropout: dropout probability.
        tik_lambda: Tikhonov weight of the guidance estimate (fixed).
        scale: fixed factor from ppm to the U-Net's working units (see :mod:`qsmnet.models.common`).
        pad: zero padding of the dipole operator used for the Tikhonov estimate.
        init, init_params: the initial estimate (see :class:`~qsmnet.models.common.InitialEstimate`):
            ``"tikhonov"`` with no parameters (closed form with ``tik_lambda``, computed inside
            ``forward``) or a solver name and its parameters (``"tikhonov"``, ``{"lam": "auto"}``
            is the Tikhonov solver with lambda chosen per subject), solved on the whole volume.
        guide_lambda: Tikhonov weight of the residual-guide channel (None: no guide).
        refine_channels: width of a full-resolution refinement head (0: none). MONAI's ``UNet``
            has no skip connection at full resolution (its first layer is a stride-2 convolution
            and its output a transposed one), so the correction it adds to the estimate is
            smooth on the scale of two voxels and blurs sharp edges the estimate already has (a
            haematoma's rim: +0.16 ppm one voxel outside, -0.13 one voxel inside on benchmark v2's
            haemorrhage head, where the Tikhonov estimate itself was within 0.03). The head is
            three convolutions at full resolution (3x3x3, 1x1x1, 3x3x3: a 5-voxel receptive
            field) that see the U-Net's inputs and its output and add to it. Width 8 costs
            about 1 s per forward at 160^3 on 2 CPU threads, three times the U-Net body
            (full-resolution layers are memory-bound). Its last layer starts at zero, so a
            network grown from one without the head (:func:`~qsmnet.models.io.load_grown`) first
            computes the same.
    """

    #: parameter prefixes a network may lack and still be grown into this one (zero-started).
    grown_branches = ("refine.",)

    def __init__(
        self,
        channels: Sequence[int] = (8, 16, 32, 64),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        norm=None,
        act="PRELU",
        dropout: float = 0.0,
        tik_lambda: float = 0.02,
        scale: float = 10.0,
        pad: int = 0,
        init: str = "tikhonov",
        init_params: dict | None = None,
        guide_lambda: float | None = None,
        refine_channels: int = 0,
    ):
        super().__init__()
        self._set_init(init, init_params, guide_lambda)
        norm = tuple(norm) if isinstance(norm, list) else norm
        act = tuple(act) if isinstance(act, list) else act
        self.unet = UNet(
            spatial_dims=3,
            in_channels=2 + self.init_channels,
            out_channels=1,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        self.refine = _refine_head(2 + self.init_channels, int(refine_channels), act, norm) \
            if refine_channels else None
        self.multiple = math.prod(int(s) for s in strides)
        self.tik_lambda = float(tik_lambda)
        self.scale = float(scale)
        self.pad = pad

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry,
                init: torch.Tensor | None = None) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) (ppm, 0/1); geometry: B Geometries -> chi (B, 1, X, Y, Z) ppm.

        ``init``: the initial estimate when precomputed (e.g. on the whole volume a patch came
        from), (B, :attr:`init_channels`, X, Y, Z); None computes it here with
        :meth:`initial_estimate`.
        """
        f = field * mask
        init = self.initial_estimate(field, mask, geometry) if init is None else init * mask
        if init.shape[1] != self.init_channels:
            raise ValueError(f"init has {init.shape[1]} channels, this network takes {self.init_channels}")
        tik = init[:, :1]
        # Guide channels last, so a network grown from a guide-less one keeps its channel order.
        x = torch.cat([f * self.scale, tik * self.scale, mask, init[:, 1:] * self.scale], dim=1)
        shape = x.shape[-3:]
        m = self.multiple
        extra = [(-n) % m for n in shape]
        if any(extra):
            x = nn.functional.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]))
        x = channels_last(x)
        out = self.unet(x)
        if self.refine is not None:
            out = out + self.refine(torch.cat([x, out], dim=1))
        out = out[..., : shape[0], : shape[1], : shape[2]].contiguous()
        return (tik + out / self.scale) * mask


def _refine_head(in_channels: int, width: int, act, norm) -> nn.Sequential:
    """Full-resolution head: (inputs + U-Net output) -> correction; the last layer starts at zero."""
    if width < 1:
        raise ValueError(f"refine_channels must be >= 0, got {width}")
    head = nn.Sequential(
        Convolution(3, in_channels + 1, width, act=act, norm=norm),
        Convolution(3, width, width, kernel_size=1, act=act, norm=norm),
        Convolution(3, width, 1, conv_only=True),
    )
    nn.init.zeros_(head[-1].conv.weight)
    nn.init.zeros_(head[-1].conv.bias)
    return head
