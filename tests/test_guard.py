"""The out-of-domain guard on network predictions, and the default method."""

from __future__ import annotations


def test_default_method_is_tv():
    """No shipped network is cleared as the default: they lose to TKD on real data (issue 17)."""
    from qsmnet.inference.methods import default_method, default_ready, shipped_networks

    assert not [n for n in shipped_networks() if default_ready(n)]
    assert default_method(quiet=True) == "tv"
