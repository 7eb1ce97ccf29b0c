"""QSM image-quality metrics, defined exactly as the QSM-CI scorer (``qsm_ci.qsm_eval``, a port of
QSM.rs ``tests/common/mod.rs``) computes them, plus standard SSIM, PSNR and per-label statistics.

Every function takes numpy arrays or torch tensors (any device; converted to numpy float64) of one
shape, normally (X, Y, Z) maps in ppm; a mask is boolean-ized with ``mask > 0`` and ``None`` means
everywhere. Percentages are returned for NRMSE and HFEN. Mean-insensitive metrics (NRMSE, PSNR)
compare demeaned maps, because QSM leaves the mean of chi undetermined.

Conventions shared with the scorer: an empty mask gives NaN for nrmse/hfen/psnr and 0 for
correlation/xsim/ssim; :func:`all_metrics` first zeroes both maps outside the mask (and non-finite
reconstruction values), so that neighbourhood filters (XSIM, SSIM, HFEN) see the same hard edge.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import gaussian_laplace, uniform_filter

#: Edge length (voxels) of the uniform SSIM/XSIM window.
WINDOW = 5
#: XSIM constants: (K1 L)^2 and (K2 L)^2 with L = 1 ppm, K1 = 0.01, K2 = 0.001.
XSIM_C1, XSIM_C2 = 1e-4, 1e-6


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    m = np.asarray(mask) > 0
    if m.shape != tuple(shape):
        raise ValueError(f"mask shape {m.shape} != image shape {tuple(shape)}")
    return m


def _prep(recon, truth, mask):
    a, b = _np(recon), _np(truth)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: recon {a.shape}, truth {b.shape}")
    return a, b, _mask(mask, a.shape)


def _linear_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y = slope * x + intercept`` (QSM.rs ``linear_fit``; (0, 0) if degenerate)."""
    n = x.size
    sx, sy = x.sum(), y.sum()
    denom = n * (x * x).sum() - sx * sx
    if abs(denom) < 1e-30:
        return 0.0, 0.0
    slope = (n * (x * y).sum() - sx * sy) / denom
    return float(slope), float((sy - slope * sx) / n)


def _nrmse_pair(recon, truth, mask) -> tuple[float, float]:
    a, b, m = _prep(recon, truth, mask)
    if not m.any():
        return math.nan, math.nan
    r = a[m] - a[m].mean()
    t = b[m] - b[m].mean()
    norm_t = math.sqrt(float((t * t).sum()))
    if norm_t < 1e-30:
        return math.nan, math.nan
    nrmse_ = 100.0 * math.sqrt(float(((r - t) ** 2).sum())) / norm_t
    slope, intercept = _linear_fit(t, r)
    if abs(slope) < 1e-30:
        return nrmse_, nrmse_
    corrected = r / slope - intercept / slope
    return nrmse_, 100.0 * math.sqrt(float(((corrected - t) ** 2).sum())) / norm_t


def nrmse(recon, truth, mask=None) -> float:
    """Normalised RMSE (%) of the demeaned maps inside the mask: ``100 ||r - t|| / ||t||`` with
    ``r``, ``t`` the reconstruction and truth minus their in-mask means. NaN if the mask is empty or
    the truth is constant there."""
    return _nrmse_pair(recon, truth, mask)[0]


def nrmse_detrend(recon, truth, mask=None) -> float:
    """NRMSE (%) after undoing a linear miscalibration: fit ``r = s t + c`` by least squares, then
    score ``(r - c) / s`` against ``t`` (demeaned maps, inside the mask). Insensitive to a global
    scale error (e.g. a wrong B0 or TE), sensitive to structure errors."""
    return _nrmse_pair(recon, truth, mask)[1]


def hfen(recon, truth, mask=None, sigma: float = 1.5) -> float:
    """High-frequency error norm (%): ``100 ||LoG(r) - LoG(t)|| / ||LoG(t)||`` inside the mask,
    with a Laplacian of Gaussian (sigma 1.5 voxels, truncated at 5 sigma, i.e. a 15-voxel kernel;
    scipy's ``gaussian_laplace`` with reflect boundaries) applied to the whole volume. NaN if the
    mask is empty or the filtered truth vanishes."""
    a, b, m = _prep(recon, truth, mask)
    if not m.any():
        return math.nan
    lr = gaussian_laplace(a, sigma=sigma, truncate=5.0)[m]
    lt = gaussian_laplace(b, sigma=sigma, truncate=5.0)[m]
    denom = math.sqrt(float((lt * lt).sum()))
    if denom < 1e-30:
        return math.nan
    val = 100.0 * math.sqrt(float(((lr - lt) ** 2).sum())) / denom
    return val if math.isfinite(val) else math.nan


def _moments(a: np.ndarray, b: np.ndarray):
    """Local means, variances and covariance over 5x5x5 windows truncated at the volume boundary
    (out-of-volume voxels are absent, not zero), population statistics."""
    k3 = float(WINDOW**3)

    def wsum(x):  # sum over the in-bounds part of each window
        return uniform_filter(x, size=WINDOW, mode="constant", cval=0.0) * k3

    cnt = wsum(np.ones_like(a))
    cnt[cnt == 0] = 1.0
    mu_a, mu_b = wsum(a) / cnt, wsum(b) / cnt
    var_a = wsum(a * a) / cnt - mu_a * mu_a
    var_b = wsum(b * b) / cnt - mu_b * mu_b
    cov = wsum(a * b) / cnt - mu_a * mu_b
    return mu_a, mu_b, var_a, var_b, cov


def _ssim_mean(moments, m: np.ndarray, c1: float, c2: float) -> float:
    """Mean over ``m`` of the SSIM map built from :func:`_moments` (0 where nothing is valid)."""
    if not m.any():
        return 0.0
    mu_a, mu_b, var_a, var_b, cov = moments
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    valid = m & (den > 0.0)
    if not valid.any():
        return 0.0
    return float(np.mean(num[valid] / den[valid]))


def xsim(recon, truth, mask=None) -> float:
    """XSIM (Milovic et al. 2024): SSIM tuned for QSM, mean over the mask of the SSIM map with
    5x5x5 uniform windows (truncated at the border: out-of-volume voxels are absent), population
    (co)variances, dynamic range L = 1 ppm, K1 = 0.01, K2 = 0.001. 1 for identical maps."""
    a, b, m = _prep(recon, truth, mask)
    return _ssim_mean(_moments(a, b), m, c1=XSIM_C1, c2=XSIM_C2) if m.any() else 0.0


def _dynamic_range(t: np.ndarray, m: np.ndarray) -> float:
    if not m.any():
        return math.nan
    v = t[m]
    return float(v.max() - v.min())


def ssim(
    recon, truth, mask=None, data_range: float | None = None, k1: float = 0.01, k2: float = 0.03
) -> float:
    """Standard SSIM (Wang et al. 2004) on the same windows as :func:`xsim` (5x5x5 uniform,
    truncated at the border, population statistics), averaged over the mask.

    Args:
        data_range: the dynamic range L; default: the truth's range inside the mask
            (``max - min`` of ``truth[mask]``), so the score does not depend on the map's units.
        k1, k2: the usual constants, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``. With ``data_range=1``
            and ``k2=0.001`` this is exactly :func:`xsim`.
    """
    a, b, m = _prep(recon, truth, mask)
    return _ssim_from(_moments(a, b) if m.any() else None, b, m, data_range, k1, k2)


def _ssim_from(moments, b, m, data_range, k1=0.01, k2=0.03) -> float:
    L = _dynamic_range(b, m) if data_range is None else float(data_range)
    if not m.any() or not L > 0:
        return 0.0
    return _ssim_mean(moments, m, c1=(k1 * L) ** 2, c2=(k2 * L) ** 2)


def correlation(recon, truth, mask=None) -> float:
    """Pearson correlation inside the mask (0 if the mask is empty or a map is constant there)."""
    a, b, m = _prep(recon, truth, mask)
    if not m.any():
        return 0.0
    r = a[m] - a[m].mean()
    t = b[m] - b[m].mean()
    den = math.sqrt(float((r * r).sum()) * float((t * t).sum()))
    return float((r * t).sum() / den) if den != 0.0 else 0.0


def psnr(recon, truth, mask=None, data_range: float | None = None) -> float:
    """Peak SNR (dB) of the demeaned maps inside the mask: ``10 log10(L^2 / MSE)``.

    The peak L is the truth's dynamic range inside the mask (``max - min`` of ``truth[mask]``)
    unless ``data_range`` is given; MSE is the mean squared difference of the in-mask-demeaned
    maps (the same residual as :func:`nrmse`). inf for identical maps; NaN for an empty mask.
    """
    a, b, m = _prep(recon, truth, mask)
    if not m.any():
        return math.nan
    L = _dynamic_range(b, m) if data_range is None else float(data_range)
    r = a[m] - a[m].mean()
    t = b[m] - b[m].mean()
    mse = float(np.mean((r - t) ** 2))
    if mse == 0.0:
        return math.inf
    if not L > 0:
        return math.nan
    return 10.0 * math.log10(L * L / mse)


def roi_stats(vol, labels, mask=None) -> dict[int, tuple[int, float, float]]:
    """Per-label statistics: ``{label: (n voxels, mean, std)}`` over the nonzero labels inside the
    mask (std with ddof 0, in the volume's unit). Labels are rounded to integers."""
    v = _np(vol)
    lab = np.rint(_np(labels)).astype(np.int64)
    if lab.shape != v.shape:
        raise ValueError(f"labels shape {lab.shape} != volume shape {v.shape}")
    sel = _mask(mask, v.shape) & (lab != 0) & np.isfinite(v)
    ids, inv, n = np.unique(lab[sel], return_inverse=True, return_counts=True)
    x = v[sel]
    mean = np.bincount(inv, weights=x, minlength=ids.size) / np.maximum(n, 1)
    dev = x - mean[inv]
    std = np.sqrt(np.bincount(inv, weights=dev * dev, minlength=ids.size) / np.maximum(n, 1))
    return {int(i): (int(c), float(mu), float(s)) for i, c, mu, s in zip(ids, n, mean, std, strict=True)}


def all_metrics(recon, truth, mask=None) -> dict[str, float]:
    """All scalar metrics as the QSM-CI scorer applies them: both maps are zeroed outside the mask
    (and the reconstruction's non-finite values too) before scoring.

    Returns:
        ``{"nrmse", "nrmse_detrend", "hfen", "xsim", "ssim", "correlation", "psnr"}`` as floats.
    """
    a, b, m = _prep(recon, truth, mask)
    a = np.where(m & np.isfinite(a), a, 0.0)
    b = np.where(m, b, 0.0)
    n, ndt = _nrmse_pair(a, b, m)
    mom = _moments(a, b) if m.any() else None
    return {
        "nrmse": n,
        "nrmse_detrend": ndt,
        "hfen": hfen(a, b, m),
        "xsim": _ssim_mean(mom, m, XSIM_C1, XSIM_C2),
        "ssim": _ssim_from(mom, b, m, None),
        "correlation": correlation(a, b, m),
        "psnr": psnr(a, b, m),
    }
