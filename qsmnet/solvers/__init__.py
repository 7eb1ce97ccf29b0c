"""Classical dipole-inversion solvers, one module per family, selected by name.

Every solver answers the call shared with the networks::

    chi = solver(field, mask, geometry, *, info=None, **params)

``field``/``mask``: (X, Y, Z) or (B, 1, X, Y, Z) tensors (ppm; any device); ``geometry``: a
:class:`~qsmnet.physics.Geometry` or one per sample. chi (ppm) has the field's shape and is zero
outside the mask. ``info`` (a dict), when given, receives at least ``iterations`` and
``residual`` (``||M (A chi - f)|| / ||M f||``, batch maximum); solvers with a regularisation
choice also ``lambda``, ``lambda_method`` and, after a sweep, ``lambda_sweep``
(:mod:`qsmnet.solvers.select`).

    >>> from qsmnet.solvers import get_solver
    >>> chi = get_solver("tv")(field, mask, geometry, lam=5e-5)
"""

from __future__ import annotations

from . import ilsqr, medi, ndi, tikhonov, tkd, tv  # noqa: F401 - importing registers the solvers
from .registry import SOLVERS, get_solver, register

__all__ = ["SOLVERS", "get_solver", "register"]
