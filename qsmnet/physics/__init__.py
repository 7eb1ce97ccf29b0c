"""Physics core: dipole kernel and operator, geometry, units. Imports nothing else from qsmnet."""

from .dipole import DipoleOperator, dipole_kernel, forward_field, next_fast_len
from .geometry import Geometry, affine_rotation, b0_dir_from_affine, geometry_list, is_oblique, normalise
from .units import GAMMA_HZ_PER_T, check_b0, check_te, hz_to_ppm, ppm_to_hz, ppm_to_rad, rad_to_ppm, to_ppm

__all__ = [
    "GAMMA_HZ_PER_T",
    "DipoleOperator",
    "Geometry",
    "affine_rotation",
    "check_b0",
    "check_te",
    "b0_dir_from_affine",
    "dipole_kernel",
    "forward_field",
    "geometry_list",
    "hz_to_ppm",
    "is_oblique",
    "next_fast_len",
    "normalise",
    "ppm_to_hz",
    "ppm_to_rad",
    "rad_to_ppm",
    "to_ppm",
]
