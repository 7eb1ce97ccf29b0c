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


#: Plausible field strengths (T): 0.01 T (ultra-low field) to 30 T. A value above is refused with
#: a hint: 1000-30000 reads as mT, above 1e6 as a Larmor frequency in Hz.
B0_RANGE_T = (0.01, 30.0)
#: Plausible echo times (s): gradient-echo TEs are 1-100 ms; 1 s or more reads as milliseconds.
TE_RANGE_S = (1e-5, 1.0)


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value:g}")
    return value


def check_b0(b0: float) -> float:
    """``b0`` as a float after checking it is a field strength in tesla.

    Raises:
        ValueError: not positive, or outside :data:`B0_RANGE_T` (e.g. 3000, mT, or 127.7e6, Hz).
    """
    b0 = _positive("b0", b0)
    lo, hi = B0_RANGE_T
    if not lo <= b0 <= hi:
        guess = "Hz (a Larmor frequency)" if b0 > 1e6 else "mT" if b0 > hi else "a fraction of a tesla"
        raise ValueError(f"b0 = {b0:g} is not a field strength in tesla (expected {lo:g}-{hi:g} T, "
                         f"e.g. 3); it looks like {guess}")  # fmt: skip
    return b0


def check_te(te: float) -> float:
    """``te`` as a float after checking it is an echo time in seconds.

    Raises:
        ValueError: not positive, or outside :data:`TE_RANGE_S` (e.g. 20, which is milliseconds).
    """
    te = _positive("te", te)
    lo, hi = TE_RANGE_S
    if not lo <= te < hi:
        guess = "milliseconds" if te >= hi else "microseconds or less"
        raise ValueError(f"te = {te:g} is not an echo time in seconds (expected below {hi:g} s, "
                         f"e.g. 0.02 for 20 ms); it looks like {guess}")  # fmt: skip
    return te


def hz_to_ppm(hz, b0: float):
    """Frequency offset (Hz) to field shift (ppm) at field strength ``b0`` (T)."""
    return hz / (GAMMA_HZ_PER_T * 1e-6 * check_b0(b0))


def ppm_to_hz(ppm, b0: float):
    """Field shift (ppm) to frequency offset (Hz) at field strength ``b0`` (T)."""
    return ppm * (GAMMA_HZ_PER_T * 1e-6 * check_b0(b0))


def rad_to_ppm(rad, te: float, b0: float):
    """Unwrapped phase (rad) accrued at echo time ``te`` (s) to field shift (ppm) at ``b0`` (T)."""
    return rad / (2 * math.pi * GAMMA_HZ_PER_T * check_b0(b0) * check_te(te)) * 1e6


def ppm_to_rad(ppm, te: float, b0: float):
    """Field shift (ppm) to phase (rad) accrued at echo time ``te`` (s) at ``b0`` (T)."""
    return ppm * 1e-6 * 2 * math.pi * GAMMA_HZ_PER_T * check_b0(b0) * check_te(te)


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
            raise ValueError("units 'hz' need b0, the field strength in tesla")
        return hz_to_ppm(values, b0)
    if units == "rad":
        if b0 is None or te is None:
            raise ValueError("units 'rad' need b0 (field strength, T) and te (echo time, s)")
        return rad_to_ppm(values, te, b0)
    raise ValueError(f"unknown units {units!r}: choose ppm, hz or rad")
