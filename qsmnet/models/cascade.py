"""Two networks in sequence: a trained, frozen first stage and a U-Net that refines its output.

The first stage (the *base*, e.g. the shipped ``unet_tv``) maps the field to chi on the whole
volume. The second (the *head*, a :class:`~qsmnet.models.QSMUNet`) gets the base's answer as its
initial estimate, together with the residual guide of that answer
(:func:`~qsmnet.models.common.residual_guide`): the part of the measured field the base still
leaves unexplained, which is new information a deeper network alone would not have, because the
dipole field is nonlocal and the guide is computed on the whole volume. This is the cascade of
"Deep Cascade of CNNs" (Schlemper et al. 2018) with the data-consistency block replaced by the
guide, trained stage by stage so each stage fits a CPU budget.

The base's answer, like any precomputed estimate, is the whole volume's: inference computes it
before any sliding window, averaged over :attr:`QSMCascade.base_flips` grid flips
(:func:`qsmnet.inference.network.whole_volume_init`), and training reads it from a cache filled the
same way (:class:`qsmnet.data.PrecomputedDataset` with ``base=``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .unet import QSMUNet


class QSMCascade(nn.Module):
    """A frozen base network followed by a U-Net that refines its whole-volume answer.

    Args:
        base: the first stage: shipped weights name or weights path (loaded, frozen), a model
            config dict (built; its weights come with this network's state dict), or a network.
            It computes its own initial estimate (e.g. ``QSMUNet(init="tv")``).
        base_flips: grid flips averaged for the base's answer (1, 2, 4 or 8; as ``--flips``).
        guide_lambda: Tikhonov weight of the head's residual-guide channel (> 0).
        channels, strides, num_res_units, norm, act, dropout, scale: the head U-Net
            (:class:`QSMUNet`).
        init_head_from_base: start the head as a copy of the base's weights (of its head, for a
            cascade) when their shapes agree (a trained feature extractor; training then adapts it
            to the better input).

    The state dict holds both stages (``base.*``, ``head.*``), so saved weights do not depend on
    the base's file once exported (:meth:`portable_config` stores the base's config, not its name).
    """

    def __init__(
        self,
        base: str | dict | nn.Module,
        base_flips: int = 4,
        guide_lambda: float = 0.02,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        norm=None,
        act="PRELU",
        dropout: float = 0.0,
        scale: float = 10.0,
        init_head_from_base: bool = True,
    ):
        super().__init__()
        from .io import build_network, load_network

        self.base_config: dict | None = None
        if isinstance(base, nn.Module):
            net = base
        elif isinstance(base, dict):
            net, self.base_config = build_network(base), copy.deepcopy(base)
        else:
            net, meta = load_network(str(base))
            self.base_config = meta["model"]
        if int(base_flips) not in (1, 2, 4, 8):
            raise ValueError(f"base_flips must be 1, 2, 4 or 8, got {base_flips}")
        self.base = net.eval().requires_grad_(False)
        self.base_flips = int(base_flips)
        self.head = QSMUNet(channels=channels, strides=strides, num_res_units=num_res_units, norm=norm,
                            act=act, dropout=dropout, scale=scale, guide_lambda=guide_lambda)
        self.multiple = self.head.multiple
        if init_head_from_base:
            # from the last stage of the base when the base is itself a cascade
            own, src = self.head.state_dict(), getattr(self.base, "head", self.base).state_dict()
            if own.keys() == src.keys() and all(own[k].shape == src[k].shape for k in own):
                self.head.load_state_dict(src)

    # The interface of InitialEstimate that inference and training rely on.
    precomputed_init = True

    @property
    def init_channels(self) -> int:
        return self.head.init_channels

    def train(self, mode: bool = True):
        """Train the head; the base stays in eval mode (frozen)."""
        super().train(mode)
        self.base.eval()
        return self

    def guide(self, field: torch.Tensor, mask: torch.Tensor, geometry, est: torch.Tensor) -> torch.Tensor:
        """The head's ``init`` from the base's answer ``est``: (B, :attr:`init_channels`, X, Y, Z)."""
        return self.head.guide(field, mask, geometry, est * mask)

    def initial_estimate(self, field: torch.Tensor, mask: torch.Tensor, geometry) -> torch.Tensor:
        """The base's answer (one pass on the whole input, no flips) and its residual guide.

        Inference instead averages the base over :attr:`base_flips` flips, with sliding windows
        when needed (:func:`qsmnet.inference.network.whole_volume_init`), as the training data do.
        """
        with torch.no_grad():
            est = self.base(field, mask, geometry)
        return self.guide(field, mask, geometry, est)

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry,
                init: torch.Tensor | None = None) -> torch.Tensor:
        """field, mask: (B, 1, X, Y, Z) -> chi (B, 1, X, Y, Z) ppm; ``init`` as :meth:`guide` returns."""
        init = self.initial_estimate(field, mask, geometry) if init is None else init
        return self.head(field, mask, geometry, init=init)

    def portable_config(self, model_cfg: dict) -> dict:
        """``model_cfg`` with ``base`` given by its model config rather than a weights name, so the
        exported weights rebuild without the base's file."""
        out = dict(model_cfg)
        if isinstance(out.get("base"), str) and self.base_config is not None:
            out["base"] = copy.deepcopy(self.base_config)
        return out
