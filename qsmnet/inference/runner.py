"""Running a loaded ``nn.Module`` on a volume: the whole-volume initial estimate, sliding windows
and flip averaging. Used by :mod:`.network` (inference) and :mod:`.refine` (test-time tuning),
neither of which the other needs to import."""

from __future__ import annotations

import torch
from torch import nn

from qsmnet.data.augment import flip_average
from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry

from . import windows as W


def run_network(
    net: nn.Module,
    field: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    p: dict,
    overlap: float = W.DEFAULT_OVERLAP,
    half: bool = False,
    init: torch.Tensor | None = None,
    flips: int = 1,
) -> torch.Tensor:
    """Forward pass (no grad) of ``net`` on (1, 1, X, Y, Z) ``field``/``mask`` following plan ``p``.

    ``init``: the network's initial estimate if already computed (else computed here when the
    network wants it precomputed on the whole volume). ``flips``: average the answers on the first
    ``flips`` grid flips of :data:`FLIPS` (1: the input as it is)."""
    if flips not in (1, 2, 4, 8):
        raise QSMNetError(f"flips must be 1, 2, 4 or 8, got {flips}")
    init = whole_volume_init(net, field, mask, geometry, init, p, overlap, half)
    multiple = int(getattr(net, "multiple", 1))

    def run(fl: torch.Tensor, ml: torch.Tensor, g: Geometry, il: torch.Tensor | None) -> torch.Tensor:
        def fn(fw: torch.Tensor, mw: torch.Tensor, iw: torch.Tensor | None = None) -> torch.Tensor:
            # The network builds its dipole operator on the window's shape with this geometry.
            kw = {} if iw is None else {"init": iw}
            if half:
                with torch.autocast("cuda", dtype=torch.float16):
                    return net(fw, mw, g, **kw).float()
            return net(fw, mw, g, **kw)

        with torch.no_grad():
            if p["mode"] == "windows":
                return W.sliding_windows(fn, fl, ml, p["roi"], overlap, multiple, extra=il)
            return fn(fl, ml, il).float() * ml

    return flip_average(run, field, mask, geometry, init, flips)


def whole_volume_init(
    net: nn.Module,
    field: torch.Tensor,
    mask: torch.Tensor,
    geometry: Geometry,
    init: torch.Tensor | None = None,
    p: dict | None = None,
    overlap: float = W.DEFAULT_OVERLAP,
    half: bool = False,
) -> torch.Tensor | None:
    """The initial estimate of a network that wants it precomputed (``QSMUNet(init="tv")``), solved
    once on the whole volume and never per window (the dipole field is nonlocal); ``init`` when
    already given; None for networks that compute their own start inside ``forward``.

    A cascade (:class:`~qsmnet.models.QSMCascade`) starts from its base network's answer: the base
    runs like any network (plan ``p``, sliding windows if it says so) averaged over the cascade's
    ``base_flips`` flips, as its training data were made."""
    if init is not None or not getattr(net, "precomputed_init", False):
        return init
    base = getattr(net, "base", None)
    with torch.no_grad():
        if base is None:
            return net.initial_estimate(field, mask, geometry)
        p = p or {"mode": "whole", "roi": None}
        est = run_network(base, field, mask, geometry, p, overlap, half, flips=net.base_flips)
        return net.guide(field, mask, geometry, est)
