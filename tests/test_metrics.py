"""Metrics against the QSM-CI scorer (qsm_ci.qsm_eval, the dev-only oracle) and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qsm_ci import qsm_eval as Q
from scipy.ndimage import gaussian_filter

from qsmnet import metrics as M

SHAPE = (19, 21, 17)


def _structured(rng):
    """A piecewise-constant 'brain' (spheres of different chi) plus smooth background, its mask
    and an imperfect reconstruction (scaled, offset, blurred, noisy, with a streak)."""
    x, y, z = np.meshgrid(*[np.arange(n) - n / 2 for n in SHAPE], indexing="ij")
    truth = 0.02 * gaussian_filter(rng.standard_normal(SHAPE), 3) / 0.05
    for c, r, v in (((0, 0, 0), 4, 0.1), ((4, -3, 2), 2.5, -0.08), ((-5, 4, -2), 3, 0.15)):
        truth[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r] += v
    mask = (x / 8.5) ** 2 + (y / 9.5) ** 2 + (z / 7.5) ** 2 < 1
    recon = 0.8 * gaussian_filter(truth, 0.7) + 0.01 + 0.01 * rng.standard_normal(SHAPE)
    recon[:, 10, :] += 0.05
    return recon, truth, mask


def _random(rng):
    truth = 0.05 * rng.standard_normal(SHAPE)
    recon = truth + 0.03 * rng.standard_normal(SHAPE)
    mask = rng.random(SHAPE) > 0.3
    return recon, truth, mask


CASES = {"structured": _structured, "random": _random}


def _rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("case", sorted(CASES))
def test_core_metrics_match_qsm_ci(case, rng):
    recon, truth, mask = CASES[case](rng)
    n_ref, ndt_ref = Q.nrmse_challenge(recon, truth, mask)
    assert _rel(M.nrmse(recon, truth, mask), n_ref) < 1e-3
    assert _rel(M.nrmse_detrend(recon, truth, mask), ndt_ref) < 1e-3
    assert _rel(M.hfen(recon, truth, mask), Q.hfen(recon, truth, mask)) < 1e-3
    assert _rel(M.xsim(recon, truth, mask), Q.xsim(recon, truth, mask)) < 1e-3
    assert _rel(M.correlation(recon, truth, mask), Q.correlation(recon, truth, mask)) < 1e-3
    # the values are non-trivial (the comparison is meaningful)
    assert 5 < n_ref < 200 and abs(ndt_ref - n_ref) > 0.1 and 0 < Q.xsim(recon, truth, mask) < 0.999


@pytest.mark.parametrize("case", sorted(CASES))
def test_all_metrics_match_qsm_ci_scorer(case, rng):
    recon, truth, mask = CASES[case](rng)
    truth = truth + 0.2 * ~mask  # non-zero outside the mask: the scorer zeroes it first
    recon = recon.copy()
    recon[0, 0, 0] = np.nan
    ref, _ = Q.score_arrays(recon, truth, mask.astype(np.uint8), kind="chi")
    ours = M.all_metrics(recon, truth, mask)
    assert set(ours) == {"nrmse", "nrmse_detrend", "hfen", "xsim", "ssim", "correlation", "psnr"}
    for key in ("nrmse", "nrmse_detrend", "hfen", "xsim", "correlation"):
        assert _rel(ours[key], ref[key]) < 1e-3, key
    assert all(isinstance(v, float) and math.isfinite(v) for v in ours.values())


def _ssim_naive(a, b, m, L, k1=0.01, k2=0.03, w=5):
    """Voxel-by-voxel SSIM with truncated 5x5x5 windows (the definition, written plainly)."""
    c1, c2, h = (k1 * L) ** 2, (k2 * L) ** 2, w // 2
    vals = []
    for i, j, k in zip(*np.nonzero(m), strict=True):
        sl = tuple(slice(max(p - h, 0), p + h + 1) for p in (i, j, k))
        x, y = a[sl].ravel(), b[sl].ravel()
        mx, my = x.mean(), y.mean()
        vx, vy, cxy = x.var(), y.var(), ((x - mx) * (y - my)).mean()
        vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_naive_definition_and_reduces_to_xsim(rng):
    shape = (7, 9, 8)
    truth = gaussian_filter(rng.standard_normal(shape), 1.0)
    recon = truth + 0.3 * rng.standard_normal(shape)
    mask = rng.random(shape) > 0.5
    L = float(truth[mask].max() - truth[mask].min())
    assert _rel(M.ssim(recon, truth, mask), _ssim_naive(recon, truth, mask, L)) < 1e-6
    assert _rel(M.ssim(recon, truth, mask, data_range=2.0), _ssim_naive(recon, truth, mask, 2.0)) < 1e-6
    assert _rel(M.ssim(recon, truth, mask, data_range=1.0, k2=0.001), Q.xsim(recon, truth, mask)) < 1e-9
    # the default dynamic range makes SSIM unit-free: ppm or ppb give the same score
    assert M.ssim(recon * 1000, truth * 1000, mask) == pytest.approx(M.ssim(recon, truth, mask), rel=1e-9)
    assert M.ssim(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)


def test_psnr_closed_form(rng):
    recon, truth, mask = _structured(rng)
    L = truth[mask].max() - truth[mask].min()
    r = recon[mask] - recon[mask].mean()
    t = truth[mask] - truth[mask].mean()
    expected = 20 * math.log10(L / math.sqrt(np.mean((r - t) ** 2)))
    assert M.psnr(recon, truth, mask) == pytest.approx(expected, rel=1e-9)
    # psnr and nrmse measure the same demeaned residual
    n = M.nrmse(recon, truth, mask) / 100
    assert M.psnr(recon, truth, mask) == pytest.approx(
        20 * math.log10(L * math.sqrt(t.size) / (n * np.linalg.norm(t))), rel=1e-9
    )
    shifted = expected - 20 * math.log10(L)
    assert M.psnr(recon, truth, mask, data_range=1.0) == pytest.approx(shifted, rel=1e-9)
    assert M.psnr(truth + 0.3, truth, mask) > 250  # an offset is not an error (up to rounding)


def test_identical_inputs_and_invariances(rng):
    _, truth, mask = _structured(rng)
    assert M.nrmse(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert M.nrmse_detrend(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert M.hfen(truth, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert M.xsim(truth, truth, mask) == pytest.approx(1.0, abs=1e-9)
    assert M.correlation(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    # demeaned nrmse ignores an offset; detrended nrmse also a scale
    assert M.nrmse(truth + 0.1, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert M.nrmse(2 * truth, truth, mask) == pytest.approx(100.0, rel=1e-9)
    assert M.nrmse_detrend(2 * truth - 0.1, truth, mask) == pytest.approx(0.0, abs=1e-9)
    assert M.correlation(-truth, truth, mask) == pytest.approx(-1.0, abs=1e-12)


def test_empty_mask_follows_scorer_conventions(rng):
    recon, truth, _ = _random(rng)
    empty = np.zeros(SHAPE, bool)
    out = M.all_metrics(recon, truth, empty)
    for key in ("nrmse", "nrmse_detrend", "hfen", "psnr"):
        assert math.isnan(out[key])
    assert out["xsim"] == 0.0 == Q.xsim(recon, truth, empty)
    assert out["correlation"] == 0.0 == Q.correlation(recon, truth, empty)
    assert out["ssim"] == 0.0


def test_torch_equals_numpy_and_mask_none(rng):
    recon, truth, mask = _structured(rng)
    ref = M.all_metrics(recon, truth, mask)
    as_t = [torch.from_numpy(np.asarray(v, np.float32)) for v in (recon, truth, mask)]
    got = M.all_metrics(*as_t)
    for k, v in ref.items():
        assert got[k] == pytest.approx(v, rel=1e-4), k
    assert M.nrmse(recon, truth) == pytest.approx(M.nrmse(recon, truth, np.ones(SHAPE)), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        M.nrmse(recon, truth[:-1], None)


def test_roi_stats_matches_qsm_ci_region_stats(rng):
    recon, _, mask = _structured(rng)
    labels = rng.integers(0, 5, SHAPE).astype(np.float32)
    ours = M.roi_stats(recon, labels, mask)
    ref = Q.region_stats(recon, labels.astype(np.int32), mask, min_vox=0)
    assert sorted(ours) == sorted(int(k) for k in ref) == [1, 2, 3, 4]
    for lab, (n, mean, std) in ours.items():
        r = ref[str(lab)]
        assert n == r["n"]
        assert mean == pytest.approx(r["mean"], abs=2e-6)
        assert std == pytest.approx(r["std"], abs=2e-6)
        sel = mask & (labels == lab)
        assert mean == pytest.approx(recon[sel].mean(), rel=1e-12)
    whole = M.roi_stats(torch.from_numpy(recon), torch.from_numpy(labels))
    assert whole[1][0] == int((labels == 1).sum())
