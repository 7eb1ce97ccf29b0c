"""Guess the units of a field map from its values (a heuristic for warnings and ``qsmnet info``)."""

from __future__ import annotations

import numpy as np

#: Robust amplitude (99th percentile of |value|) below which a map is taken to be in ppm. Local
#: fields in ppm are ~0.01-0.2 (total fields can reach a few ppm near air-tissue boundaries).
PPM_MAX = 1.0
#: Robust amplitude below which a map is taken to be phase in rad (unwrapped local phase is a few
#: rad); at or above it, a frequency in Hz (1 ppm is 64 Hz at 1.5 T, 128 Hz at 3 T, so local fields
#: are tens of Hz).
RAD_MAX = 10.0
#: Wrapped phase: every value within [-pi, pi] (+ this slack) and at least ``WRAPPED_FRACTION`` of
#: the voxels beyond +-2.5 rad (wrapped phase is roughly uniform on [-pi, pi]; fields are not).
WRAPPED_SLACK = 1e-3
WRAPPED_FRACTION = 0.05


def guess_units(data, mask=None) -> str:
    """Guess whether a field map is in "ppm", "hz" or "rad" from the values inside ``mask``.

    Rules, on the finite values inside the mask (all finite values if the mask is None or empty),
    with ``a`` the 99th percentile of their absolute values:

    1. wrapped phase: max |v| <= pi + 1e-3 and >= 5 % of |v| > 2.5  ->  "rad";
    2. a < 1 (:data:`PPM_MAX`)                                     ->  "ppm";
    3. a < 10 (:data:`RAD_MAX`)                                     ->  "rad" (unwrapped phase);
    4. otherwise                                                    ->  "hz".

    An all-zero or empty map reads as "ppm". This is a guess: an Hz map at low field or a strong
    total field in ppm can land in the "rad" band, so callers warn rather than convert.

    Args:
        data: (X, Y, Z) array or tensor.
        mask: optional array of the same shape; voxels with mask > 0 are used.
    """
    v = np.asarray(data.detach().cpu() if hasattr(data, "detach") else data, dtype=np.float64)
    if mask is not None:
        m = np.asarray(mask.detach().cpu() if hasattr(mask, "detach") else mask) > 0
        if m.shape == v.shape and m.any():
            v = v[m]
    v = np.abs(v[np.isfinite(v)])
    if v.size == 0:
        return "ppm"
    if v.max() <= np.pi + WRAPPED_SLACK and np.mean(v > 2.5) >= WRAPPED_FRACTION:
        return "rad"
    a = float(np.percentile(v, 99))
    if a < PPM_MAX:
        return "ppm"
    if a < RAD_MAX:
        return "rad"
    return "hz"
