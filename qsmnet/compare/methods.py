"""Method specifications for a comparison: labels, registered names and parameters.

A comparison names its methods in one of three ways, all normalised by :func:`normalise_methods`
into ``{label: {"method": registered name, **params}}``:

- a mapping ``{"tv_strong": {"method": "tv", "lam": 1e-3}, "tkd": {}}`` (an entry without
  ``method`` uses its label as the registered name);
- a list of names and/or mappings, as in ``qsmnet/conf/compare.yaml``:
  ``["default", "tkd", {"name": "tv_strong", "method": "tv", "lam": 1e-3}]``;
- a mapping's ``method`` may also be a callable: a :class:`~qsmnet.inference.contract.Method`, or a
  function ``fn(field, mask, geometry, *, info=None, **params) -> chi`` (e.g. a freshly trained
  network wrapped in a function, in a notebook), which gets the contract's adapter;
- the special name ``default``, which stands for what ``qsmnet predict`` runs without ``--method``:
  a solver default (``tv`` while no network is cleared) by its name, labelled with it and dropped
  when that solver is listed anyway with the same parameters; a default network under its
  out-of-domain guard (method ``default``, :func:`qsmnet.inference.methods.load_default`), labelled
  ``<network>+guard`` so that it can sit beside the bare network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from qsmnet.errors import QSMNetError

if TYPE_CHECKING:
    from qsmnet.inference.contract import Method

#: Method name that stands for :data:`qsmnet.inference.DEFAULT_METHOD`.
DEFAULT_ALIAS = "default"


def _plain(x):
    """OmegaConf containers -> plain dicts/lists (without importing omegaconf)."""
    if hasattr(x, "_metadata") and hasattr(x, "_get_node"):  # DictConfig / ListConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(x, resolve=True)
    return x


def _default_spec() -> tuple[str, str]:
    """(label, method) that ``default`` stands for (see the module docstring)."""
    from qsmnet.inference import DEFAULT_METHOD
    from qsmnet.solvers import SOLVERS

    if DEFAULT_METHOD in SOLVERS:
        return DEFAULT_METHOD, DEFAULT_METHOD
    return f"{DEFAULT_METHOD}+guard", DEFAULT_ALIAS


def normalise_methods(methods, params: Mapping | None = None) -> dict[str, dict]:
    """``{label: {"method": registered name, **params}}`` from any accepted form (see the module).

    Args:
        methods: a mapping label -> spec, or a sequence of names / mappings with an optional
            ``name`` (the label; default: the method name) and ``method`` key.
        params: extra parameters per label, merged over each spec (``{"tv": {"lam": 1e-3}}``).

    Raises:
        QSMNetError: empty list, duplicate labels, a mapping without a method, or ``params`` for a
            label that is not compared.
    """
    methods = _plain(methods)
    params = _plain(params) or {}
    out: dict[str, dict] = {}
    from_alias: set[str] = set()

    def add(label, spec):
        spec = dict(spec or {})
        alias = label == DEFAULT_ALIAS or spec.get("method") == DEFAULT_ALIAS
        method = spec.pop("method", label)
        default_label, default = _default_spec() if alias else (None, None)
        method = method if callable(method) else default if method == DEFAULT_ALIAS else str(method)
        label = default_label if label == DEFAULT_ALIAS else str(label)
        if label in out and (alias or label in from_alias) and out[label] == {"method": method, **spec}:
            return  # `default` is a method listed anyway (e.g. before a network is registered)
        if alias:
            from_alias.add(label)
        if label in out:
            raise QSMNetError(f"method {label!r} is listed twice; give one of them another name")
        out[label] = {"method": method, **spec}

    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    if isinstance(methods, Mapping):
        for label, spec in methods.items():
            add(label, spec)
    elif isinstance(methods, Sequence):
        for item in methods:
            if isinstance(item, str):
                add(item, {})
            elif isinstance(item, Mapping):
                item = dict(item)
                if "method" not in item and "name" not in item:
                    raise QSMNetError(f"method entry {item} needs a 'method' (a registered name)")
                label = item.pop("name", None) or item.get("method")
                add(label, item)
            else:
                raise QSMNetError(f"a method is a name or a mapping, got {item!r}")
    else:
        raise QSMNetError(f"methods must be a list or a mapping, got {methods!r}")
    if not out:
        raise QSMNetError("no methods to compare: give at least one, e.g. methods=[tkd,tv]")
    for label, extra in params.items():
        label = _default_spec()[0] if str(label) == DEFAULT_ALIAS else str(label)
        if label not in out:
            raise QSMNetError(f"params given for {label!r}, which is not among the methods {list(out)}")
        out[label].update(dict(extra or {}))
    return out


def bind_method(label: str, spec: Mapping) -> tuple[Method, dict]:
    """The method (under the one contract, :func:`qsmnet.inference.load_method`) and the checked
    parameters of one normalised spec.

    Raises:
        QSMNetError: unknown method name (listing the choices) or a parameter the method does not take.
    """
    from qsmnet.inference import load_method

    spec = dict(spec)
    name = spec.pop("method")
    fn = load_method(name)
    try:
        fn.check_params(spec)
    except QSMNetError:
        bad = ", ".join(sorted(k for k in spec if k not in fn.parameters()))
        raise QSMNetError(f"method {label!r} ({fn.name}) does not take parameter(s) {bad}") from None
    return fn, spec
