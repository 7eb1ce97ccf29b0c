"""Method lookup, in one place: classical solvers, shipped networks and network files by name.

Every method answers ``method(field, mask, geometry, *, info=None, **params) -> chi`` (ppm):

- a classical solver registered in :mod:`qsmnet.solvers` (``"tv"``, ``"tikhonov"``, ...);
- a shipped network, by the name of its weights in ``qsmnet/weights`` (``"unet"``, ``"lpcnn"``),
  wrapped in a :class:`~qsmnet.inference.network.NetworkMethod`;
- a network file (``.safetensors`` with its ``.json``, or a Lightning ``.ckpt``), by path;
- ``"default"``: :func:`default_method`, the best shipped network that beats TV on the benchmark
  (``tv`` until one does).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from qsmnet.errors import QSMNetError

#: Shipped networks in order of preference (best benchmark first); :func:`default_method` picks the
#: first one present and marked ``default_ready``.
PREFERRED_NETWORKS = ("cascade3_tv", "cascade_tv", "unet_tv", "varnet_tv", "unet", "lpcnn")
#: Method used when no network weights are shipped.
FALLBACK_METHOD = "tv"
#: The name that stands for :func:`default_method`.
DEFAULT_ALIAS = "default"
_NETWORK_SUFFIXES = (".safetensors", ".ckpt", ".json")


def shipped_networks() -> list[str]:
    """Names of the networks whose weights ship in ``qsmnet/weights``."""
    from qsmnet.models.io import available

    return available()


def default_ready(name: str) -> bool:
    """True when shipped network ``name`` is cleared to be the default: its weights' JSON says
    ``"default_ready": true``, set only once its model card shows it beating TV on the fixed
    benchmark set (a network that loses to TV must not silently replace it for patients)."""
    from qsmnet.models.io import resolve_weights

    try:
        meta = json.loads(resolve_weights(name).with_suffix(".json").read_text())
    except (OSError, ValueError, QSMNetError):
        return False
    return bool(meta.get("default_ready", False))


def default_method(quiet: bool = False) -> str:
    """Name of the method used when none is given.

    The first of :data:`PREFERRED_NETWORKS` that is shipped and :func:`default_ready`, else
    :data:`FALLBACK_METHOD` (``tv``) with a one-line note on stderr (unless ``quiet``).
    """
    shipped = shipped_networks()
    for name in PREFERRED_NETWORKS:
        if name in shipped and default_ready(name):
            return name
    if not quiet:
        why = (
            f"the shipped networks ({', '.join(shipped)}) do not beat TV on the benchmark yet"
            if shipped
            else "no network weights are shipped"
        )
        print(f"qsmnet: note: {why}; using the classical {FALLBACK_METHOD} solver", file=sys.stderr)
    return FALLBACK_METHOD


def method_names() -> list[str]:
    """Names :func:`get_method` accepts (solvers and shipped networks; paths are accepted too)."""
    from qsmnet.solvers import SOLVERS

    return sorted(set(SOLVERS) | set(shipped_networks()))


def is_network_path(name: str | os.PathLike) -> bool:
    """True when ``name`` looks like a network file rather than a registered name."""
    text = os.fspath(name)
    return text.lower().endswith(_NETWORK_SUFFIXES) or os.sep in text or (os.altsep or "\0") in text


def get_method(name: str | os.PathLike | Callable) -> Callable:
    """The method for a solver name, a shipped network name, a network file or ``"default"``.

    Args:
        name: see the module docstring; a callable is returned unchanged.

    Returns:
        A callable ``method(field, mask, geometry, *, info=None, **params) -> chi``. Networks are
        :class:`~qsmnet.inference.network.NetworkMethod` instances (loaded on the CPU; they move
        to the field's device when called).

    Raises:
        QSMNetError: unknown name (listing the choices) or an unreadable network file.
    """
    if callable(name):
        return name
    from qsmnet.solvers import SOLVERS

    text = os.fspath(name)
    if text == DEFAULT_ALIAS:
        text = default_method()
    if text in SOLVERS:
        return SOLVERS[text]
    from .network import NetworkMethod

    if text in shipped_networks():
        return NetworkMethod.load(text)
    if is_network_path(text) or Path(text).exists():
        return NetworkMethod.load(text)
    raise QSMNetError(
        f"unknown method {text!r}: choose one of {', '.join(method_names())}, "
        "or give a network file with --checkpoint"
    )
