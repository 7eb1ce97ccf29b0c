"""The solver registry: every classical method is selected by name.

A solver is a function ``solver(field, mask, geometry, *, info=None, **params) -> chi``; its
parameters and their defaults live in its signature only.
"""

from __future__ import annotations

from collections.abc import Callable

from qsmnet.errors import QSMNetError

#: name -> solver function, filled by :func:`register` when :mod:`qsmnet.solvers` is imported.
SOLVERS: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator that adds a solver to :data:`SOLVERS` under ``name`` (a duplicate is an error)."""

    def deco(fn: Callable) -> Callable:
        if name in SOLVERS and SOLVERS[name] is not fn:
            raise ValueError(f"solver {name!r} registered twice")
        SOLVERS[name] = fn
        fn.solver_name = name
        return fn

    return deco


def get_solver(name: str) -> Callable:
    """The solver registered under ``name``.

    Raises:
        QSMNetError: unknown name; the message lists the choices.
    """
    try:
        return SOLVERS[name]
    except KeyError:
        raise QSMNetError(f"unknown method {name!r}: choose one of {', '.join(sorted(SOLVERS))}") from None
