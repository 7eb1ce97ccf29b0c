"""Brain (signal) mask from the magnitude, and susceptibility referencing.

:func:`brain_mask` is a signal mask, not a skull stripper: Otsu's threshold on the smoothed,
echo-combined magnitude keeps every voxel with tissue signal, then morphology cleans it (opening,
largest connected component, hole filling, optional erosion). On a brain-only crop or a
skull-stripped magnitude it is the brain; on a whole head it also keeps scalp and muscle (bone and
air, dark on gradient echo, are excluded). Pass a brain mask from a dedicated tool (e.g. FSL BET,
SynthStrip) when one is available; background-field removal erodes the mask further.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._util import as_tensor


def _ball(radius_mm: float, voxel_size: Sequence[float]) -> np.ndarray:
    r = [max(int(np.floor(radius_mm / v)), 0) for v in voxel_size]
    g = np.meshgrid(*[np.arange(-k, k + 1) * v for k, v in zip(r, voxel_size, strict=True)], indexing="ij")
    return sum(c * c for c in g) <= radius_mm**2 + 1e-9


def brain_mask(
    magnitude,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    threshold: float | None = None,
    threshold_scale: float = 1.0,
    max_fraction: float = 0.2,
    smooth_mm: float = 1.0,
    open_mm: float = 1.0,
    erode_mm: float = 0.0,
) -> torch.Tensor:
    """Signal mask from a magnitude image (see the module docstring for what it covers).

    Steps: root-sum-of-squares over echoes; Gaussian smoothing (``smooth_mm``); threshold (unless
    ``threshold`` is given, the lower of Otsu's times ``threshold_scale`` and ``max_fraction`` of
    the 99th percentile: Otsu's alone splits the tissue of an image without background, e.g. a
    crop inside the brain, and sits high in dim tissue); opening with a ball of ``open_mm``
    (detaches thin bridges and speckle); the largest connected component; hole filling (3D, then
    slice by slice along each axis, for holes open at the volume's edge); erosion by ``erode_mm``.

    Args:
        magnitude: (X, Y, Z) or (E, X, Y, Z) magnitude, numpy array or tensor (any device).
        voxel_size: voxel size (mm).
        threshold: absolute threshold on the combined, smoothed magnitude (default: Otsu's).
        threshold_scale: factor on Otsu's threshold (< 1 keeps darker tissue).
        max_fraction: cap of the threshold as a fraction of the 99th percentile.
        smooth_mm: std (mm) of the Gaussian smoothing before thresholding (0: none).
        open_mm: radius (mm) of the opening ball (0: none).
        erode_mm: radius (mm) of a final erosion (0: none).

    Returns:
        (X, Y, Z) bool tensor on the magnitude's device (computed on the CPU with scipy/scikit-image).

    Raises:
        ValueError: the magnitude is not 3D/4D or nothing exceeds the threshold.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    m = as_tensor(magnitude)
    device = m.device
    a = m.detach().cpu().numpy().astype(np.float64)
    if a.ndim == 4:
        a = np.sqrt((a * a).sum(0))
    if a.ndim != 3:
        raise ValueError(f"magnitude must be (X, Y, Z) or (E, X, Y, Z), got shape {tuple(m.shape)}")
    a = np.nan_to_num(a)
    if smooth_mm > 0:
        a = ndimage.gaussian_filter(a, [smooth_mm / v for v in voxel_size])
    if threshold is not None:
        t = float(threshold)
    else:
        t = min(float(threshold_otsu(a)) * threshold_scale, max_fraction * float(np.percentile(a, 99)))
    mask = a > t
    if open_mm > 0:
        mask = ndimage.binary_opening(mask, _ball(open_mm, voxel_size))
    labels, n = ndimage.label(mask)
    if n == 0:
        raise ValueError(f"no voxel of the magnitude exceeds the mask threshold {t:.4g}")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = labels == int(sizes.argmax())
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        mask = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(mask, axis, 0)], axis)
    if erode_mm > 0:
        mask = ndimage.binary_erosion(mask, _ball(erode_mm, voxel_size))
    return torch.from_numpy(mask).to(device)


def reference(chi, mask, csf_mask=None) -> torch.Tensor:
    """Reference a susceptibility map: subtract its mean over ``csf_mask`` (default: the whole ``mask``).

    The dipole model leaves the mean of chi undetermined, so maps are reported relative to a region.

    Args:
        chi: (X, Y, Z) susceptibility (ppm), tensor or array.
        mask: (X, Y, Z) brain mask (non-zero inside); the result is zero outside it.
        csf_mask: optional (X, Y, Z) reference region (e.g. lateral-ventricle CSF), non-zero inside.

    Returns:
        (X, Y, Z) float32 tensor ``(chi - mean(chi[ref])) * mask`` on chi's device.

    Raises:
        ValueError: the reference region is empty.
    """
    c = as_tensor(chi)
    m = as_tensor(mask, device=c.device) != 0
    ref = m if csf_mask is None else as_tensor(csf_mask, device=c.device) != 0
    if not bool(ref.any()):
        raise ValueError("the reference region is empty")
    return (c - c[ref].mean()) * m
