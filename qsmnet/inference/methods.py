"""Method lookup, in one place: classical solvers, shipped networks and network files by name.

:func:`load_method` gives any of them under the one contract of :mod:`.contract`
(``method(field, mask, geometry, **params) -> Result``); :func:`get_method` gives the underlying
callable ``fn(field, mask, geometry, *, info=None, **params) -> chi`` (ppm) that the adapter wraps:

- a classical solver registered in :mod:`qsmnet.solvers` (``"tv"``, ``"tikhonov"``, ...);
- a shipped network, by the name of its weights in ``qsmnet/weights`` (``"unet"``, ``"lpcnn"``),
  wrapped in a :class:`~qsmnet.inference.network.NetworkMethod`;
- a network file (``.safetensors`` with its ``.json``, or a Lightning ``.ckpt``), by path;
- ``"default"``: :func:`default_method`, the best shipped network cleared as the default
  (``default_ready``; ``tv`` when none is). :func:`load_method` gives it under its out-of-domain
  guard with TV as the fallback (:func:`load_default`); :func:`get_method` gives the bare network.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from qsmnet.errors import QSMNetError

#: Shipped networks in order of preference (best benchmark first); :func:`default_method` picks the
#: first one present and marked ``default_ready``.
PREFERRED_NETWORKS = ("cascade3_tv", "cascade_tv", "unet_tv", "varnet_tv", "unet_head", "unet", "lpcnn")
#: Method used when no network weights are shipped, and the solver whose answer replaces the
#: default network's when its out-of-domain guard flags it (:func:`load_default`).
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
        logging.getLogger(__name__).info("%s; using the classical %s solver", why, FALLBACK_METHOD)
    return FALLBACK_METHOD


def method_names() -> list[str]:
    """Names :func:`get_method` accepts (solvers and shipped networks; paths are accepted too)."""
    from qsmnet.solvers import SOLVERS

    return sorted(set(SOLVERS) | set(shipped_networks()))


def is_experimental(name: str) -> bool:
    """True for a shipped network not cleared as a default (its weights' JSON has
    ``"default_ready": false``: its model card does not show it beating TV)."""
    from qsmnet.models.io import resolve_weights

    try:
        meta = json.loads(resolve_weights(name).with_suffix(".json").read_text())
    except (OSError, ValueError, QSMNetError):
        return False
    return meta.get("default_ready") is False


def _card_line(path: Path | None, fallback: str) -> str:
    """The first sentence of a model card's "What it is" paragraph (or ``fallback``)."""
    try:
        text = Path(path).with_suffix(".md").read_text()
    except (OSError, TypeError):
        return fallback
    body = " ".join(ln.strip() for ln in text.split("\n\n", 2)[1].splitlines()) if "\n\n" in text else ""
    body = body.replace("**What it is.**", "").strip()
    first = body.split(". ")[0].strip().rstrip(".")
    return (first[:117] + "...") if len(first) > 120 else (first or fallback)


def load_method(name: str | os.PathLike | Callable):
    """Any method under the one contract: an :class:`~qsmnet.inference.contract.Adapter`.

    Args:
        name: as :func:`get_method`; a callable with the internal call is wrapped too, and an
            :class:`Adapter` is returned unchanged.

    Raises:
        QSMNetError: as :func:`get_method`.
    """
    from .contract import Adapter

    if isinstance(name, Adapter):
        return name
    if isinstance(name, str) and name == DEFAULT_ALIAS:
        return load_default()
    fn = get_method(name)
    from .network import NetworkMethod

    if isinstance(fn, NetworkMethod):
        shipped = fn.path is not None and Path(fn.path).parent == _weights_dir()
        return Adapter(fn, fn.name, "network", _card_line(fn.path, f"{type(fn.net).__name__} network"),
                       experimental=shipped and is_experimental(fn.name))  # fmt: skip
    solver = getattr(fn, "solver_name", None)
    if solver:
        return Adapter(fn, solver, "solver")
    return Adapter(fn, getattr(fn, "__name__", type(fn).__name__), "function")


def guarded(method, fallback: str | None = FALLBACK_METHOD):
    """``method`` (a name, path or callable for :func:`load_method`; None or ``"default"``: the
    :func:`default_method`) under the method contract, its network call wrapped in a
    :class:`~qsmnet.inference.guard.GuardedMethod` with ``fallback`` (None: report only); solvers
    are returned unchanged."""
    from .contract import Adapter
    from .guard import GuardedMethod

    m = load_method(default_method() if method is None or method == DEFAULT_ALIAS else method)
    if m.kind != "network":
        return m
    return Adapter(GuardedMethod(m.fn, fallback), m.name, m.kind, m.description, experimental=m.experimental)


def load_default(fallback: str | None = FALLBACK_METHOD):
    """The default method under the contract (what ``"default"`` and ``qsmnet predict`` without
    ``--method`` run): the network :func:`default_method` names, under its out-of-domain guard
    (:func:`guarded`) with ``fallback``'s answer replacing a flagged prediction; or
    :data:`FALLBACK_METHOD` itself when no network is cleared."""
    m = guarded(None, fallback)
    if m.kind == "network":
        m.hint = (
            f" (it is the default method; for solver options name a solver, e.g. --method {FALLBACK_METHOD})"
        )
    return m


def method_table() -> list[dict]:
    """One row per registered method, without loading any network weights:
    ``{"name", "kind", "defaults", "description", "experimental"}`` (solvers, then shipped networks)."""
    from qsmnet.models.io import resolve_weights
    from qsmnet.solvers import SOLVERS

    from .contract import first_line, signature_defaults
    from .network import NetworkMethod

    rows = [{"name": n, "kind": "solver", "defaults": signature_defaults(fn),
             "description": first_line(fn.__doc__), "experimental": False}
            for n, fn in sorted(SOLVERS.items())]  # fmt: skip
    net_defaults = signature_defaults(NetworkMethod.__call__)
    for n in shipped_networks():
        rows.append({"name": n, "kind": "network", "defaults": dict(net_defaults),
                     "description": _card_line(resolve_weights(n), "network"),
                     "experimental": is_experimental(n)})  # fmt: skip
    return rows


def _weights_dir() -> Path:
    from qsmnet.models.io import WEIGHTS_DIR

    return WEIGHTS_DIR


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
