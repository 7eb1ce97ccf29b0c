"""Unit conversions between phase (rad), frequency (Hz) and field shift (ppm of B0).

Conventions:
    * gamma/2pi = 42.577478 MHz/T (proton, CODATA 2018).
    * Sign: a positive frequency offset gives a positive phase, ``phase = 2*pi * hz * TE``, and a
      paramagnetic source (chi > 0) gives a positive field shift along B0 next to it (the dipole
      model of :mod:`qsmnet.physics.dipole`). Scanners that store the conjugate phase (some vendors'
      left-handed convention) must be negated before use.
    * ppm here is the relative field shift ``delta_B / B0 * 1e6``; the local field and chi share it.

All functions work on numbers, numpy arrays and torch tensors, and return the same kind.
"""

from __future__ import annotations

import math

#: Proton gyromagnetic ratio over 2*pi, in Hz/T.
GAMMA_HZ_PER_T = 42.577478e6


def _check(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value}")
    return value


def hz_to_ppm(hz, b0: float):
    """Frequency offset (Hz) to field shift (ppm) at field strength ``b0`` (T)."""
    return hz / (GAMMA_HZ_PER_T * 1e-6 * _check("B0 (T)", b0))


def ppm_to_hz(ppm, b0: float):
    """Field shift (ppm) to frequency offset (Hz) at field strength ``b0`` (T)."""
    return ppm * (GAMMA_HZ_PER_T * 1e-6 * _check("B0 (T)", b0))


def rad_to_ppm(rad, te: float, b0: float):
    """Unwrapped phase (rad) accrued at echo time ``te`` (s) to field shift (ppm) at ``b0`` (T)."""
    return rad / (2 * math.pi * GAMMA_HZ_PER_T * _check("B0 (T)", b0) * _check("TE (s)", te)) * 1e6


def ppm_to_rad(ppm, te: float, b0: float):
    """Field shift (ppm) to phase (rad) accrued at echo time ``te`` (s) at ``b0`` (T)."""
    return ppm * 1e-6 * 2 * math.pi * GAMMA_HZ_PER_T * _check("B0 (T)", b0) * _check("TE (s)", te)


def to_ppm(values, units: str, *, b0: float | None = None, te: float | None = None):
    """Convert a field map in ``units`` ('ppm', 'hz' or 'rad') to ppm.

    Raises:
        ValueError: an unknown unit, or ``b0``/``te`` missing where the unit needs them.
    """
    units = units.lower()
    if units == "ppm":
        return values
    if units == "hz":
        if b0 is None:
            raise ValueError("--units hz needs the field strength: pass --b0 (T)")
        return hz_to_ppm(values, b0)
    if units == "rad":
        if b0 is None or te is None:
            raise ValueError("--units rad needs the field strength and echo time: pass --b0 (T) and --te (s)")
        return rad_to_ppm(values, te, b0)
    raise ValueError(f"unknown units {units!r}: choose ppm, hz or rad")
