"""An independent phase -> local field chain (NumPy, SciPy, scikit-image only; no qsmnet.phase).

Written from the textbook steps to check ``qsmnet.phase`` against: scikit-image's
``unwrap_phase`` on each echo (masked), each echo's global 2pi offset aligned to the previous
echo by the median of the unwrapped minus the wrapped echo difference (or, ``unwrap="laplacian"``,
Laplacian unwrapping of each echo: the Laplacian of the true phase from the wrapped neighbour
differences, inverted by FFT on a zero-padded grid; it is exact up to a harmonic function, which
V-SHARP removes, and is the family of unwrapping STI Suite and SEPIA offer), a magnitude-squared weighted
least-squares line in TE per voxel (Hz -> ppm with gamma = 42.577478 MHz/T), and V-SHARP: for
radii from large to small, ``f - sphere_r * f`` (numpy FFT, circular, on a zero-padded grid) where
the sphere fits inside the mask, then division by the largest kernel's transfer function where it
exceeds ``threshold``, inside the mask eroded by the smallest radius, minus its mean there.

    python scripts/benchmark_phase.py --case DIR --reference
"""

from __future__ import annotations

import numpy as np

GAMMA_MHZ_T = 42.577478


def unwrap_echoes(phase: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from skimage.restoration import unwrap_phase

    out = np.zeros(phase.shape, dtype=np.float64)
    for e in range(phase.shape[0]):
        u = unwrap_phase(np.ma.masked_array(phase[e].astype(np.float64), mask=~mask))
        out[e] = np.ma.filled(u, 0.0)
        if e:
            wrapped = np.angle(np.exp(1j * (phase[e] - phase[e - 1])))
            k = np.round(np.median((out[e] - out[e - 1] - wrapped)[mask]) / (2 * np.pi))
            out[e] -= 2 * np.pi * k
    return out * mask


def _laplacian_symbol(shape, voxel_size) -> np.ndarray:
    """Transfer function of the 7-point discrete Laplacian (rfftn layout, per mm^2)."""
    axes = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    g = np.meshgrid(*axes, indexing="ij")
    return sum(2 * (np.cos(2 * np.pi * k) - 1) / v**2 for k, v in zip(g, voxel_size, strict=True))


def laplacian_unwrap(phase: np.ndarray, mask: np.ndarray, voxel_size, pad: int = 16) -> np.ndarray:
    """Each echo's phase, unwrapped from its Laplacian (up to a harmonic function), in ``mask``.

    The Laplacian of the true phase is the divergence of the wrapped neighbour differences (exact
    where neighbours differ by less than pi), taken between mask voxels only; it is inverted with the
    FFT on a zero-padded grid (the least-squares unwrapping of Ghiglia and Romero)."""
    shape = tuple(n + 2 * pad for n in phase.shape[1:])
    sl = tuple(slice(pad, pad + n) for n in phase.shape[1:])
    lap = _laplacian_symbol(shape, voxel_size)
    inv = np.where(lap != 0, 1.0 / np.where(lap != 0, lap, 1.0), 0.0)
    m = np.zeros(shape, dtype=bool)
    m[sl] = mask
    # neighbour pairs inside the mask along each axis, weighted by 1 / voxel^2 (the same for every echo)
    pairs = [(m & np.roll(m, -1, ax)) / v**2 for ax, v in enumerate(voxel_size)]
    out = np.zeros(phase.shape, dtype=np.float64)
    for e in range(phase.shape[0]):
        p = np.zeros(shape)
        p[sl] = phase[e]
        div = np.zeros(shape)
        for ax, w in enumerate(pairs):
            d = np.angle(np.exp(1j * (np.roll(p, -1, ax) - p))) * w
            div += d - np.roll(d, 1, ax)
        out[e] = np.fft.irfftn(np.fft.rfftn(div) * inv, shape, axes=(0, 1, 2))[sl]
    return out * mask


def fit_hz(unwrapped: np.ndarray, mag: np.ndarray, te, mask: np.ndarray) -> np.ndarray:
    t = np.asarray(te, dtype=np.float64)[:, None, None, None]
    w = mag.astype(np.float64) ** 2 + 1e-12
    tm = (w * t).sum(0) / w.sum(0)
    um = (w * unwrapped).sum(0) / w.sum(0)
    slope = (w * (t - tm) * (unwrapped - um)).sum(0) / (w * (t - tm) ** 2).sum(0)
    return slope / (2 * np.pi) * mask


def _sphere_kernel(shape, voxel_size, radius_mm):
    g = np.meshgrid(*[np.fft.fftfreq(n, 1.0 / n) * v for n, v in zip(shape, voxel_size, strict=True)],
                    indexing="ij")  # fmt: skip
    s = (sum(c * c for c in g) <= radius_mm**2).astype(np.float64)
    return np.fft.rfftn(s / s.sum())


def vsharp_ref(field, mask, voxel_size, radii_mm=(12, 10, 8, 6, 4, 3, 2), threshold=0.05, pad=16):
    shape = tuple(n + 2 * pad for n in field.shape)
    sl = tuple(slice(pad, pad + n) for n in field.shape)
    f = np.zeros(shape)
    f[sl] = field * mask
    m = np.zeros(shape)
    m[sl] = mask
    ff, fm = np.fft.rfftn(f), np.fft.rfftn(m)
    hp = np.zeros(shape)
    done = np.zeros(shape, dtype=bool)
    for r in sorted(radii_mm, reverse=True):
        k = _sphere_kernel(shape, voxel_size, r)
        inside = np.fft.irfftn(fm * k, shape, axes=(0, 1, 2)) > 1 - 1e-6
        sel = inside & ~done
        hp[sel] = np.fft.irfftn(ff - ff * k, shape, axes=(0, 1, 2))[sel]
        done |= inside
        if r == max(radii_mm):
            s_big = 1.0 - k
    final = done
    h = np.fft.rfftn(hp * final)
    inv = np.where(np.abs(s_big) > threshold, 1.0 / np.where(np.abs(s_big) > threshold, s_big, 1.0), 0.0)
    local = np.fft.irfftn(h * inv, shape, axes=(0, 1, 2))
    local = (local - local[final].mean()) * final
    return local[sl], final[sl]


def reference_local_field(phase, mag, te, b0, voxel_size, mask, unwrap="skimage", **vsharp_kw):
    """(local field ppm, valid mask) from wrapped phase (E, X, Y, Z), magnitude, TE (s), B0 (T);
    ``unwrap``: "skimage" (per-echo path unwrapping) or "laplacian"."""
    mask = np.asarray(mask, dtype=bool)
    if unwrap == "laplacian":
        unwrapped = laplacian_unwrap(np.asarray(phase), mask, voxel_size)
    elif unwrap == "skimage":
        unwrapped = unwrap_echoes(np.asarray(phase), mask)
    else:
        raise ValueError(f"unwrap must be 'skimage' or 'laplacian', got {unwrap!r}")
    hz = fit_hz(unwrapped, np.asarray(mag), te, mask)
    return vsharp_ref(hz / (GAMMA_MHZ_T * b0), mask, voxel_size, **vsharp_kw)
