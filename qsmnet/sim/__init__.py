"""Phantoms and forward simulation. Imports physics (and, lazily, io to write the benchmark set).

- :func:`shapes_phantom`: random ellipsoids, cuboids, cylinders on a multi-scale texture.
- :func:`brain_phantom`: MNI152-based brain with tissue classes, iron-rich nuclei, veins,
  calcifications and microbleeds, randomly deformed; any shape and voxel size.
- :func:`simulate`: the dipole forward model plus noise and switchable imperfections.
- :func:`make_benchmark`: the fixed, seeded benchmark set.
"""

from .forward import DEFAULT_IMPERFECTIONS, Simulation, simulate
from .shapes import Phantom, shapes_phantom
from .textures import random_b0_dir, random_voxel_size, rotation_between, smooth_random_field

__all__ = [
    "DEFAULT_IMPERFECTIONS",
    "Phantom",
    "Simulation",
    "random_b0_dir",
    "random_voxel_size",
    "rotation_between",
    "shapes_phantom",
    "simulate",
    "smooth_random_field",
]
