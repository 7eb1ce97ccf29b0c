"""Scanner phase -> local field: masking, unwrapping, echo combination, background-field removal.

One small function per step, on torch tensors (the input's device; scipy/scikit-image on the CPU
where they do the job). Imports :mod:`qsmnet.physics` only.

- :func:`brain_mask`: signal mask from the magnitude (Otsu + morphology); :func:`reference`.
- :func:`unwrap_laplacian` (least squares), :func:`unwrap_quality` (exact, scikit-image),
  :func:`wrapped_laplacian`.
- :func:`fit_field`: multi-echo phase -> frequency (Hz), TE=0 phase and its standard error.
- :func:`vsharp`, :func:`pdf`: total field -> local field (ppm) and the mask where it is valid.
"""

from .bfr import pdf, vsharp
from .echo import fit_field
from .mask import brain_mask, reference
from .unwrap import solve_poisson_neumann, unwrap_laplacian, unwrap_quality, wrapped_laplacian

__all__ = [
    "brain_mask",
    "fit_field",
    "pdf",
    "reference",
    "solve_poisson_neumann",
    "unwrap_laplacian",
    "unwrap_quality",
    "vsharp",
    "wrapped_laplacian",
]
