"""The one method contract: every solver and every network answers the same call with a :class:`Result`.

``method(field, mask, geometry, **params) -> Result``, where

- ``field`` is a (X, Y, Z) local field in ppm (tensor or array, any device, any float dtype),
- ``mask`` a (X, Y, Z) mask (non-zero inside; binarised here, never used as weights),
- ``geometry`` the :class:`~qsmnet.physics.Geometry` of that grid (its shape must match),
- ``params`` the method's parameters (:meth:`Method.parameters` lists them with their defaults),

and the :class:`Result` holds chi (ppm, float32, the field's device, zero outside the mask), the
data-consistency residual (:meth:`~qsmnet.physics.DipoleOperator.residual`, padded operator) and
the parameters actually used (defaults filled in, λ as chosen). Solvers (functions registered in
:mod:`qsmnet.solvers`) and networks (:class:`~qsmnet.inference.network.NetworkMethod`) keep their
own internal call; :class:`Adapter` is the thin layer that gives both this contract.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from qsmnet.errors import QSMNetError
from qsmnet.physics import DipoleOperator, Geometry

#: Names the contract itself uses; a method's own parameters never take them.
RESERVED = ("field", "mask", "geometry", "info")


@dataclass
class Result:
    """What a method returns.

    Attributes:
        chi: (X, Y, Z) float32 susceptibility (ppm) on the field's device, zero outside the mask.
        params: the parameters actually used: every parameter of the method with its value
            (defaults filled in; ``lam`` is the λ chosen when it was ``"auto"``).
        info: the method's report: ``iterations``, ``lambda_method`` (how λ was chosen), ``model``
            (network name, version, weights hash), ``inference`` (windows, flips), ...
    """

    chi: torch.Tensor
    params: dict
    info: dict = field(default_factory=dict)
    _problem: tuple | None = field(default=None, repr=False)
    _residual: float | None = field(default=None, repr=False)

    @property
    def residual(self) -> float:
        """``||M (D * chi - f)|| / ||M f||`` with D the zero-padded (linear) dipole convolution.

        Computed on first access (so timing a method does not include it)."""
        if self._residual is None:
            f, m, g = self._problem
            with torch.no_grad():
                op = DipoleOperator(g, pad=True).to(self.chi.device)
                self._residual = float(op.residual(self.chi, f, m)[0])
        return self._residual


@runtime_checkable
class Method(Protocol):
    """A reconstruction method under the one contract (see the module docstring)."""

    name: str
    kind: str  # "solver", "network" or "function"
    description: str
    experimental: bool

    def parameters(self) -> dict[str, Any]: ...

    def __call__(self, field, mask, geometry: Geometry, **params) -> Result: ...


def signature_defaults(fn: Callable) -> dict[str, Any]:
    """Keyword parameters of ``fn`` (the contract's own names left out) with their defaults."""
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind is p.POSITIONAL_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty):
            continue
        out[p.name] = None if p.default is p.empty else p.default
    return out


def first_line(doc: str | None) -> str:
    """The first sentence line of a docstring (its summary)."""
    return next((ln.strip() for ln in (doc or "").splitlines() if ln.strip()), "")


class Adapter:
    """Gives a function with the internal call ``fn(field, mask, geometry, *, info=None, **params) -> chi``
    (a registered solver, a :class:`NetworkMethod`, a user's function) the :class:`Method` contract.

    Args:
        fn: the callable.
        name: the name it is reported under.
        kind: ``"solver"``, ``"network"`` or ``"function"``.
        description: one line for ``qsmnet methods``.
        experimental: True for methods not cleared for use on patients (a warning is shown).

    ``hint`` (default empty) is appended to :meth:`check_params`'s error: the default method sets
    it, so that a solver option given without ``--method`` says which method refused it.
    """

    hint = ""

    def __init__(self, fn: Callable, name: str, kind: str, description: str = "", experimental: bool = False):
        self.fn, self.name, self.kind = fn, str(name), kind
        self.description = description or first_line(getattr(fn, "__doc__", None))
        self.experimental = bool(experimental)
        try:
            self._defaults = signature_defaults(fn)
            self._open = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a callable hiding its signature: the call decides
            self._defaults, self._open = {}, True

    def __repr__(self) -> str:
        return f"<{self.kind} method {self.name!r}>"

    def parameters(self) -> dict[str, Any]:
        """The method's parameters and their defaults (the signature's, the one place they live)."""
        return dict(self._defaults)

    def check_params(self, params: dict) -> None:
        """Raise :class:`QSMNetError` naming any parameter the method does not take."""
        bad = sorted(k for k in params if k in RESERVED or not (self._open or k in self._defaults))
        if bad:
            raise QSMNetError(f"method {self.name!r} does not take parameter(s) {', '.join(bad)}{self.hint}")

    def check_geometry(self, geometry: Geometry) -> list[str]:
        """Warnings (one line each) about a geometry outside what the method was made for."""
        check = getattr(self.fn, "check_geometry", None)
        return list(check(geometry)) if check is not None else []

    def __call__(self, field, mask, geometry: Geometry, **params) -> Result:
        """Run the method; see the module docstring for the contract.

        Raises:
            ValueError: a field that is not 3D, a mask or geometry of another shape.
            QSMNetError: a parameter the method does not take.
        """
        f = torch.as_tensor(field)
        if f.dim() != 3:
            raise ValueError(f"field must be (X, Y, Z), got shape {tuple(f.shape)}")
        f = f.to(torch.float32)
        m = torch.as_tensor(mask, device=f.device)
        if tuple(m.shape) != tuple(f.shape):
            raise ValueError(f"mask shape {tuple(m.shape)} does not match field shape {tuple(f.shape)}")
        if not isinstance(geometry, Geometry) or geometry.shape != tuple(f.shape):
            got = geometry.shape if isinstance(geometry, Geometry) else type(geometry).__name__
            raise ValueError(f"geometry shape {got} does not match field shape {tuple(f.shape)}")
        self.check_params(params)
        m = m.ne(0)
        mf = m.to(torch.float32)
        f = (f * mf).contiguous()
        info: dict = {}
        chi = self.fn(f, m, geometry, info=info, **params)
        chi = torch.as_tensor(chi).detach().to(device=f.device, dtype=torch.float32).reshape(f.shape) * mf
        used = {**self._defaults, **params}
        if info.get("lambda") is not None and isinstance(used.get("lam"), str):
            used["lam"] = info["lambda"]  # the λ the method chose ("auto", "lcurve", ...)
        return Result(chi, used, info, _problem=(f, mf, geometry))
