"""Classical solvers: registry, closed-form TKD, recovery of smooth phantoms, geometry, batching, auto lambda.

Fields come from qsm-forward (an independent implementation of the forward model); chi is
scored by qsmnet.metrics' demeaned nRMSE (%).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import qsm_forward
import torch
from scipy import ndimage

from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry, forward_field
from qsmnet.physics.linalg import gradient, gradient_adjoint
from qsmnet.solvers import SOLVERS, get_solver, register
from qsmnet.solvers.base import grad_adjoint_into, grad_into, prepare
from qsmnet.solvers.lam import estimate_noise

N = 25


def nrmse(x, truth, mask) -> float:
    m = np.asarray(mask) > 0
    a = np.asarray(x)[m] - np.asarray(x)[m].mean()
    b = np.asarray(truth)[m] - np.asarray(truth)[m].mean()
    return float(100 * np.linalg.norm(a - b) / np.linalg.norm(b))


def smooth_phantom(seed=0, n=N, voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0)):
    """Gaussian blobs well inside a spherical mask; field by qsm-forward (2x zero padding)."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(np.float64)
    mask = ((x / (0.42 * n)) ** 2).sum(0) < 1
    chi = np.zeros((n,) * 3)
    for _ in range(6):
        c = rng.uniform(-0.15 * n, 0.15 * n, 3)
        w = rng.uniform(1.5, 2.5)
        chi += rng.uniform(-0.1, 0.1) * np.exp(-((x - c[:, None, None, None]) ** 2).sum(0) / (2 * w * w))
    chi *= mask
    b = np.asarray(b0_dir) / np.linalg.norm(b0_dir)
    field = qsm_forward.generate_field(chi, mask, list(voxel_size), list(b)) * mask
    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return t(chi), t(field), t(mask), Geometry((n,) * 3, voxel_size, tuple(b))


# solver -> (parameters for noiseless data, nRMSE bound in % on the smooth phantom)
NOISELESS = {
    "tkd": ({"threshold": 0.19}, 45.0),
    "tsvd": ({"threshold": 0.1}, 45.0),
    "tikhonov": ({"lam": 1e-3}, 45.0),
    "ilsqr": ({"lam": 0.0, "tol": 0.05}, 45.0),  # noiseless: undamped CG to a tolerance
    "tv": ({"lam": 1e-5, "weight": "mask", "iterations": 120}, 15.0),
    "medi": ({"lam": 1e-5, "iterations": 120}, 15.0),
    "ndi": ({"lam": 1e-6, "iterations": 100}, 60.0),
}


def test_registry_lists_all_and_rejects_unknown():
    assert set(NOISELESS) <= set(SOLVERS)
    assert get_solver("tv") is SOLVERS["tv"]
    with pytest.raises(QSMNetError, match="tikhonov"):
        get_solver("nope")
    with pytest.raises(ValueError):
        register("tv")(lambda *a, **k: None)


def test_inplace_gradients_match_linalg():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 7, 9, 11, generator=g)
    vs = (1.0, 0.7, 1.6)
    inv = torch.tensor([1 / v for v in vs])[None, :, None, None, None]
    out = torch.empty(2, 3, 7, 9, 11)
    assert torch.allclose(grad_into(x, out, inv), gradient(x[:, 0], vs), atol=1e-5)
    y = torch.randn(2, 3, 7, 9, 11, generator=g)
    adj = grad_adjoint_into(y, torch.empty_like(x), inv, torch.empty_like(y))
    assert torch.allclose(adj[:, 0], gradient_adjoint(y, vs), atol=1e-5)


def test_tkd_is_exact_where_kernel_exceeds_threshold():
    """Closed form: on a circular, noiseless field TKD returns chi's spectrum wherever |D| > t."""
    chi, _, _, geom = smooth_phantom(3, b0_dir=(0.2, 0.1, 1.0))
    field = forward_field(chi.double(), geom.voxel_size, geom.b0_dir, pad=False, dtype=torch.float64)
    x = SOLVERS["tkd"](field.float(), torch.ones_like(chi), geom, threshold=0.2)
    k = np.fft.fftn(np.asarray(x, dtype=np.float64))
    k0 = np.fft.fftn(chi.numpy().astype(np.float64))
    fx, fy, fz = np.meshgrid(*[np.fft.fftfreq(N)] * 3, indexing="ij")
    b = geom.b0_dir
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1 / 3 - (fx * b[0] + fy * b[1] + fz * b[2]) ** 2 / (fx**2 + fy**2 + fz**2)
    sel = np.abs(d) > 0.21
    assert sel.sum() > 0.5 * sel.size
    np.testing.assert_allclose(k[sel], k0[sel], atol=1e-4 * np.abs(k0).max())
    assert np.abs(k[~sel & (np.abs(d) < 0.19)] - k0[~sel & (np.abs(d) < 0.19)]).max() > 1e-3


@pytest.mark.parametrize("name", sorted(NOISELESS))
def test_recovers_smooth_phantom_from_noiseless_field(name):
    chi, field, mask, geom = smooth_phantom(0)
    params, bound = NOISELESS[name]
    info = {}
    x = SOLVERS[name](field, mask, geom, info=info, **params)
    assert x.shape == field.shape and x.dtype == torch.float32
    assert torch.all(x[mask == 0] == 0)
    assert nrmse(x, chi, mask) < bound
    assert isinstance(info["iterations"], int) and 0 <= info["residual"] < 1


@pytest.mark.parametrize("name", ["tikhonov", "tv", "ilsqr"])
def test_oblique_b0_and_anisotropic_voxels_are_honoured(name):
    chi, field, mask, geom = smooth_phantom(2, voxel_size=(1.0, 1.0, 1.6), b0_dir=(0.35, 0.25, 1.0))
    params = {"lam": 1e-4, "iterations": 60} if name == "tv" else NOISELESS[name][0]
    good = nrmse(SOLVERS[name](field, mask, geom, **params), chi, mask)
    wrong_b0 = nrmse(SOLVERS[name](field, mask, geom.with_(b0_dir=(0, 0, 1)), **params), chi, mask)
    wrong_vox = nrmse(SOLVERS[name](field, mask, geom.with_(voxel_size=(1, 1, 1)), **params), chi, mask)
    assert good < 0.75 * wrong_b0
    assert good < wrong_vox


@pytest.mark.parametrize("name", ["tkd", "tikhonov", "tv", "ndi"])
def test_batch_with_two_geometries_matches_single_solves(name):
    c1, f1, m1, g1 = smooth_phantom(0)
    c2, f2, m2, g2 = smooth_phantom(1, b0_dir=(0.3, 0.0, 1.0))
    kw = dict(NOISELESS[name][0], **({"iterations": 20} if name in ("tv", "ndi") else {}))
    kw.pop("weight", None)
    batch = SOLVERS[name](torch.stack([f1, f2])[:, None], torch.stack([m1, m2])[:, None], (g1, g2), **kw)
    assert batch.shape == (2, 1, N, N, N)
    for b, (f, m, g) in enumerate([(f1, m1, g1), (f2, m2, g2)]):
        single = SOLVERS[name](f, m, g, **kw)
        torch.testing.assert_close(batch[b, 0], single, atol=2e-5, rtol=1e-3)


def test_iterative_solvers_stop_on_tolerance():
    _, field, mask, geom = smooth_phantom(1)
    # tol applies to a fixed weight; NDI from zero: its descent alone (from the least-squares start the
    # masked residual is not monotone, chi outside the mask being free in NDI's objective)
    fixed = {"tv": {}, "ilsqr": {"lam": 0.0}, "ndi": {"lam": 1e-6, "start": "zero"}}
    for name, loose, tight in [("tv", 1e-2, 1e-4), ("ilsqr", 0.2, 0.01), ("ndi", 1e-2, 1e-5)]:
        a, b = {}, {}
        SOLVERS[name](field, mask, geom, info=a, tol=loose, **fixed[name])
        SOLVERS[name](field, mask, geom, info=b, tol=tight, **fixed[name])
        assert a["iterations"] < b["iterations"], name
        assert b["residual"] <= a["residual"] + 1e-3, name


def test_noise_estimate_and_auto_lambda_grow_with_noise():
    chi, _, mask, geom = smooth_phantom(4)
    clean = forward_field(chi, geom.voxel_size, geom.b0_dir)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(chi.shape, generator=g)
    lams, sig = {}, {}
    for s in (0.002, 0.01):
        field = (clean + s * noise) * mask
        p = prepare(field, mask, geom)
        sig[s] = float(estimate_noise(p.field, p.mask)[0])
        for name in ("tikhonov", "tv"):
            info = {}
            SOLVERS[name](field, mask, geom, lam="noise", info=info)
            lams[name, s] = info["lambda"]
    assert 0.7 * 0.01 < sig[0.01] < 1.5 * 0.01
    assert sig[0.01] > 3 * sig[0.002]
    for name in ("tikhonov", "tv"):
        assert lams[name, 0.01] > 2 * lams[name, 0.002], name


def test_rejects_mismatched_inputs():
    _, field, mask, geom = smooth_phantom(0)
    with pytest.raises(ValueError):
        SOLVERS["tkd"](field, mask, geom.with_(shape=(N, N, N + 2)))
    with pytest.raises(ValueError):
        SOLVERS["tkd"](field, mask[:-1], geom)
    with pytest.raises(ValueError):
        SOLVERS["tkd"](field, mask, geom, threshold=0.9)


def test_fortran_ordered_input_is_solved_in_c_order():
    # nibabel hands NIfTI data over in Fortran order; the solvers work on C-ordered copies (the
    # strided layout made TV ~2x slower) and give the same answer.
    _, field, mask, geom = smooth_phantom(0)
    f_ord = torch.as_tensor(np.asfortranarray(field.numpy()))
    m_ord = torch.as_tensor(np.asfortranarray(mask.numpy()))
    assert not f_ord.is_contiguous()
    p = prepare(f_ord, m_ord, geom)
    assert p.field.is_contiguous() and p.mask.is_contiguous()
    torch.testing.assert_close(SOLVERS["tv"](f_ord, m_ord, geom, iterations=20),
                               SOLVERS["tv"](field, mask, geom, iterations=20))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(NOISELESS))
def test_cpu_and_cuda_agree(name):
    chi, field, mask, geom = smooth_phantom(0)
    params = NOISELESS[name][0]
    cpu = SOLVERS[name](field, mask, geom, **params)
    gpu = SOLVERS[name](field.cuda(), mask.cuda(), geom, **params)
    assert gpu.is_cuda
    assert nrmse(gpu.cpu(), cpu, mask) < 1.0


def haematoma_phantom(model_error: float = 0.0, blob: float = 1.0, n: int = 40):
    """(chi, field, mask tensor, geometry, mask array): 8 weak tissue blobs and a ``blob`` ppm sphere (1 ppm:
    |s f| near 7 rad at 3 T, TE 20 ms; field from qsm-forward), white noise 0.01 ppm and, if asked, smooth
    non-dipolar model error of ``model_error`` x the dipole field's norm in the mask."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(np.float64)
    mask = ((x / (0.42 * n)) ** 2).sum(0) < 1
    centres = rng.uniform(-n / 5, n / 5, (8, 3, 1, 1, 1))
    chi = sum(0.05 * np.exp(-((x - c) ** 2).sum(0) / 8.0) for c in centres)
    chi = (chi + blob * (((x - np.array([4, -3, 3])[:, None, None, None]) ** 2).sum(0) < 12)) * mask
    field = qsm_forward.generate_field(chi.astype(np.float32), mask, B0_dir=[0, 0, 1]) * mask
    noisy = field + 0.01 * rng.standard_normal(field.shape) * mask
    if model_error:
        err = gaussian_filter(rng.standard_normal(field.shape), 1.5)
        noisy += err * mask * (model_error * np.linalg.norm(field[mask]) / np.linalg.norm(err[mask]))
    g = Geometry((n,) * 3, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    return chi, torch.from_numpy(noisy.astype(np.float32)), torch.from_numpy(mask), g, mask


def test_ndi_from_the_least_squares_start_survives_a_haemorrhage_sized_source():
    """A 1 ppm blob puts |s f| near 7 rad (3 T, TE 20 ms): the descent from zero settles at a wrong
    stationary point (the sine of its residual has the wrong sign there); from the damped least-squares
    start (the default) NDI lands near iLSQR at the same weight."""
    chi, field, m, g, mask = haematoma_phantom()
    from qsmnet.solvers.ndi import DEFAULT_PHASE_SCALE

    assert float(field.abs().max()) * DEFAULT_PHASE_SCALE > 4  # several rad: the nonlinearity matters
    ls = nrmse(SOLVERS["ilsqr"](field, m, g, lam=0.02), chi, mask)
    start = nrmse(SOLVERS["ndi"](field, m, g, lam=0.02), chi, mask)
    zero = nrmse(SOLVERS["ndi"](field, m, g, lam=0.02, start="zero"), chi, mask)
    assert start < ls * 1.15 and zero > start * 1.3, (ls, start, zero)
    _, small, sm, sg = smooth_phantom(1)  # phases well below pi: both starts reach the one minimiser
    a, b = {}, {}
    x = SOLVERS["ndi"](small, sm, sg, info=a, lam=0.02, tol=1e-5)
    y = SOLVERS["ndi"](small, sm, sg, info=b, lam=0.02, tol=1e-5, start="zero")
    assert abs(a["residual"] - b["residual"]) < 1e-3 and nrmse(x, y, sm) < 1.0
    with pytest.raises(ValueError, match="start"):
        SOLVERS["ndi"](field, m, g, start="tikhonov")


def test_tikhonov_pads_a_brain_that_fills_its_grid():
    # sources up to the grid's faces, true (non-periodic) field from a 2x-padded forward model:
    # the circular closed form couples each face to the opposite one, the padded one does not
    from qsmnet.solvers.tikhonov import padding

    g = torch.Generator().manual_seed(0)
    shape = (32, 32, 24)
    chi = torch.nn.functional.avg_pool3d(torch.randn(1, 1, *shape, generator=g), 5, 1, 2)[0, 0] * 0.3
    geom = Geometry(shape, (1.0, 1.0, 2.0), (0.0, 0.26, 0.97))
    field = forward_field(chi, geom.voxel_size, geom.b0_dir, pad=True)
    mask = torch.ones(shape)
    assert padding(mask[None, None], 0.5) == (16, 16, 12)
    assert padding(torch.nn.functional.pad(mask[4:-4, 4:-4, 4:-4], (4,) * 6)[None, None], 0.5) == (4, 4, 0)
    info = {}
    padded = SOLVERS["tikhonov"](field, mask, geom, lam=0.02, info=info)
    circular = SOLVERS["tikhonov"](field, mask, geom, lam=0.02, pad=0)
    assert info["padding"] == [16, 16, 12] and padded.shape == shape
    truth = chi - chi.mean()
    err = [float(((x - x.mean()) - truth).norm() / truth.norm()) for x in (padded, circular)]
    assert err[0] < 0.92 * err[1]  # 0.46 vs 0.52
    with pytest.raises(ValueError, match="pad"):
        SOLVERS["tikhonov"](field, mask, geom, pad=-1)


def test_tikhonov_gradient_floor_bounds_the_low_frequency_gain_near_the_cone():
    # The gradient penalty lam |k|^2 vanishes at low k, where the filter D / (D^2 + lam |k|^2)
    # peaks at 1 / (2 sqrt(lam) |k|) near the cone: background remnants pass amplified, by an
    # amount set by which low frequencies the grid samples. With |R|^2 = |k|^2 + floor the gain is
    # at most 1 / (2 sqrt(lam floor)) at every frequency.
    shape, lam, floor = (64, 64, 64), 0.07, 0.1
    f = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.01
    mask = torch.ones(shape)
    geom = Geometry(shape, (2.0, 2.0, 2.0), (0.0, 0.0, 1.0))
    bound = 1 / (2 * math.sqrt(lam * floor))

    def max_gain(**kw):
        chi = SOLVERS["tikhonov"](f, mask, geom, lam=lam, pad=0, **kw)
        return float((torch.fft.rfftn(chi).abs() / torch.fft.rfftn(f).abs().clamp_min(1e-12)).max())

    assert max_gain(floor=0.0) > 1.5 * bound  # 10.3 vs 6.0
    assert max_gain(floor=floor) <= bound
    identity = SOLVERS["tikhonov"](f, mask, geom, lam=lam, regulariser="identity", pad=0)
    torch.testing.assert_close(identity, SOLVERS["tikhonov"](f, mask, geom, lam=lam, regulariser="identity",
                                                           pad=0, floor=0.0))
    with pytest.raises(ValueError, match="floor"):
        SOLVERS["tikhonov"](f, mask, geom, floor=-0.1)


def _haematoma_case(n=56):
    """A 1.3 ppm ball (a haematoma, 7 mm radius) beside weak smooth tissue contrast, field by
    qsm-forward with a little white noise: (chi, tissue, ball, mask, field, mask tensor, geometry)."""
    rng = np.random.default_rng(3)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(np.float64)
    mask = ((x / (0.45 * n)) ** 2).sum(0) < 1
    tissue = sum(rng.uniform(0.03, 0.08) * np.exp(-((x - c) ** 2).sum(0) / 18.0)
                 for c in rng.uniform(-n / 4, n / 4, (10, 3, 1, 1, 1)))
    ball = ((x - np.array([0, 0, 6])[:, None, None, None]) ** 2).sum(0) <= 49
    chi = ((tissue + 1.3 * ball) * mask).astype(np.float32)
    field = qsm_forward.generate_field(chi, mask, [1, 1, 1], [0, 0, 1]) * mask
    noise = 0.002 * rng.standard_normal(field.shape) * mask
    f, m = torch.from_numpy((field + noise).astype(np.float32)), torch.from_numpy(mask)
    return chi, tissue, ball, mask, f, m, Geometry((n,) * 3, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))


def test_tikhonov_fits_a_strong_source_on_its_support_and_removes_its_cone_shadow():
    # The closed form under-reads the ball and leaves a shadow along the cone; with strong=0.3 the
    # ball is fitted on its own support and the tissue away from it comes out right.
    chi, tissue, ball, mask, f, m, g = _haematoma_case()
    plain = SOLVERS["tikhonov"](f, m, g, lam=0.02, regulariser="identity").numpy()
    info = {}
    two = SOLVERS["tikhonov"](f, m, g, lam=0.02, regulariser="identity", strong=0.3, info=info).numpy()
    near = ndimage.binary_dilation(ball, iterations=2)
    assert 0.5 * ball.sum() < info["strong_voxels"] <= near.sum() and info["iterations"] == 5
    assert plain[ball].mean() < 0.9 and two[ball].mean() > 1.15  # true 1.3 (0.83 and 1.31)
    # tissue more than 4 voxels from the ball: the error of the closed form falls 5x
    away = mask & (ndimage.distance_transform_edt(~ball) > 4)
    err = [float(np.abs((v - chi)[away]).mean()) for v in (plain, two)]
    assert err[1] < 0.3 * err[0], err  # 0.032 -> 0.006 ppm
    # the same tissue without the ball: no strong source, the closed form bit for bit
    weak = (qsm_forward.generate_field((tissue * mask).astype(np.float32), mask, [1, 1, 1], [0, 0, 1]) * mask)
    w = torch.from_numpy(weak.astype(np.float32))
    info = {}
    a = SOLVERS["tikhonov"](w, m, g, lam=0.02, regulariser="identity", strong=0.3, info=info)
    assert info["strong_voxels"] == 0
    b = SOLVERS["tikhonov"](w, m, g, lam=0.02, regulariser="identity")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a batch of both: each sample as on its own (the empty support stays the closed form)
    both = torch.stack([f, w])[:, None]
    batch = SOLVERS["tikhonov"](both, m, g, lam=0.02, regulariser="identity", strong=0.3)
    torch.testing.assert_close(batch[0, 0], torch.from_numpy(two), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch[1, 0], a, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="threshold"):
        SOLVERS["tikhonov"](f, m, g, lam=0.02, strong=0.0)


def test_tikhonov_strong_reads_the_wiener_weight_on_the_rest_of_the_field():
    # With a data-driven weight the ball's dipole makes the whole field's balance low; once the ball
    # is fitted on its support, the weight of the rest is read on the rest of the field (higher:
    # the ball's signal is gone), and the tissue away from the ball comes out closer to the truth
    # than at the weight the ball's field set.
    from qsmnet.solvers import tikhonov as tk

    chi, _, ball, mask, f, m, g = _haematoma_case()
    info = {}
    x = SOLVERS["tikhonov"](f, m, g, lam="wiener", strong=0.3, info=info).numpy()
    whole = tk.wiener_weight(tk.pad_problem(prepare(f, m, g), tk.padding(m[None, None], tk.PAD)))
    assert info["strong_voxels"] > 0 and info["strong_lambda_detect"] == pytest.approx(whole, rel=1e-5)
    assert info["lambda"] > 2 * whole  # 0.0026 -> 0.0070
    same = SOLVERS["tikhonov"](f, m, g, lam=whole, strong=0.3).numpy()
    away = mask & (ndimage.distance_transform_edt(~ball) > 4)
    err = [float(np.abs((v - chi)[away]).mean()) for v in (same, x)]
    assert err[1] < 0.9 * err[0], err  # 0.0058 -> 0.0046 ppm
    # a fixed weight, or the cone-power rule, is not re-read
    fixed = {}
    SOLVERS["tikhonov"](f, m, g, lam=0.05, strong=0.3, info=fixed)
    assert fixed["lambda"] == pytest.approx(0.05) and "strong_lambda_detect" not in fixed
