"""NIfTI read/write (nibabel), JSON sidecars, atomic writes, BIDS names, unit guessing.

May import physics; imports nothing else from qsmnet but :mod:`qsmnet.errors`.
"""

from .bids import bids_name
from .nifti import NiftiVolume, check_output, load_nifti, save_nifti, sidecar_path, write_sidecar
from .units import guess_units

__all__ = [
    "NiftiVolume",
    "bids_name",
    "check_output",
    "guess_units",
    "load_nifti",
    "save_nifti",
    "sidecar_path",
    "write_sidecar",
]
