"""3D U-Net (MONAI blocks) refining a geometry-aware Tikhonov estimate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn

from .common import channels_last, make_operator, tikhonov


class QSMUNet(nn.Module):
    """U-Net that predicts a residual on the Tikhonov estimate of chi.

    Inputs to the U-Net are three channels: ``scale * field``, ``scale * tikhonov(field)`` and the
    mask. The Tikhonov estimate uses each sample's B0 direction and voxel size, which is how a
    network with no physics inside copes with any orientation and resolution. Inputs of any size
    are zero-padded to a multiple of the U-Net's downsampling factor and cropped back.

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
    """

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
    ):
        super().__init__()
        norm = tuple(norm) if isinstance(norm, list) else norm
        act = tuple(act) if isinstance(act, list) else act
        self.unet = UNet(
            spatial_dims=3,
            in_channels=3,
            out_channels=1,
            channels=tuple(channels),
            strides=tuple(strides),
            num_res_units=num_res_units,
            norm=norm,
            act=act,
            dropout=dropout,
        )
        self.multiple = math.prod(int(s) for s in strides)
        self.tik_lambda = float(tik_lambda)
        self.scale = float(scale)
        self.pad = pad

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) (ppm, 0/1); geometry: B Geometries -> chi (B, 1, X, Y, Z) ppm."""
        op = make_operator(geometry, field, self.pad)
        f = field * mask
        tik = tikhonov(op, f, self.tik_lambda) * mask
        x = torch.cat([f * self.scale, tik * self.scale, mask], dim=1)
        shape = x.shape[-3:]
        m = self.multiple
        extra = [(-n) % m for n in shape]
        if any(extra):
            x = nn.functional.pad(x, (0, extra[2], 0, extra[1], 0, extra[0]))
        out = self.unet(channels_last(x))[..., : shape[0], : shape[1], : shape[2]].contiguous()
        return (tik + out / self.scale) * mask
