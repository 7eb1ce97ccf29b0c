"""Physics core against independent references: qsm-forward's forward model, closed forms,
explicit matrices, rotated phantoms and known unit values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qsm_forward.qsm_forward import generate_field
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from qsmnet.physics import (
    GAMMA_HZ_PER_T,
    DipoleOperator,
    Geometry,
    affine_rotation,
    b0_dir_from_affine,
    check_b0,
    check_te,
    dipole_kernel,
    forward_field,
    geometry_list,
    hz_to_ppm,
    is_oblique,
    ppm_to_hz,
    ppm_to_rad,
    rad_to_ppm,
    to_ppm,
)

MAGIC_DEG = math.degrees(math.acos(1 / math.sqrt(3)))  # 54.7356


def _blobs(shape, centres, sigmas, amps, voxel_size=(1.0, 1.0, 1.0)):
    """Sum of isotropic Gaussian blobs (in mm) sampled on a grid; zero (to 1e-30) at the corners."""
    grids = np.meshgrid(*[np.arange(n) * v for n, v in zip(shape, voxel_size, strict=True)], indexing="ij")
    out = np.zeros(shape)
    for c, s, a in zip(centres, sigmas, amps, strict=True):
        r2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        out += a * np.exp(-r2 / (2 * s * s))
    return out


def _phantom(shape, rng, voxel_size=(1.0, 1.0, 1.0)):
    """Spheres and blobs of different susceptibility (ppm), zero near the borders."""
    x, y, z = np.meshgrid(*[(np.arange(n) - n // 2) * v for n, v in zip(shape, voxel_size, strict=True)],
                          indexing="ij")
    chi = np.zeros(shape)
    ext = min(n * v for n, v in zip(shape, voxel_size, strict=True)) / 2
    for _ in range(5):
        c = rng.uniform(-0.4, 0.4, 3) * ext
        r = rng.uniform(0.1, 0.25) * ext
        chi[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 < r * r] += rng.uniform(-0.2, 0.3)
    return chi


def rotation_matrix(angles_deg) -> np.ndarray:
    """Extrinsic rotation about x, then y, then z (degrees), from scipy."""
    return Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()


def _rel_err(a, b) -> float:
    """Relative L2 distance of the demeaned arrays."""
    return float(np.linalg.norm(_demeaned(a) - _demeaned(b)) / np.linalg.norm(_demeaned(b)))


def _demeaned(a):
    return a - a.mean()


# --- forward model vs qsm-forward -------------------------------------------------------------

@pytest.mark.parametrize(
    ("voxel_size", "b0"),
    [
        ((1.0, 1.0, 1.0), (0.0, 0.0, 1.0)),
        ((1.0, 1.0, 2.0), (0.3, -0.2, 0.9)),
        ((0.8, 1.2, 1.5), (-0.5, 0.4, 0.7)),  # anisotropic in-plane: qsm-forward gets vx, vy swapped
    ],
)
def test_forward_field_matches_qsm_forward(voxel_size, b0, rng):
    shape = (15, 21, 25)  # odd; 2N = 30, 42, 50 are 2,3,5,7-smooth so both pad to the same grid
    chi = _phantom(shape, rng, voxel_size)
    assert chi[-1, -1, -1] == 0  # qsm-forward pads with the corner value; ours with zeros
    b = np.asarray(b0) / np.linalg.norm(b0)  # qsm-forward does not normalise B0_dir
    vs_theirs = [voxel_size[1], voxel_size[0], voxel_size[2]]  # its meshgrid uses 'xy' indexing
    ref = generate_field(chi, voxel_size=vs_theirs, B0_dir=list(b))
    ours = forward_field(chi, voxel_size, b0, pad=True, dtype=torch.float64)
    op = DipoleOperator(Geometry(shape, voxel_size, b0), pad=True)
    assert op.padded_shape == tuple(2 * n for n in shape)
    # qsm-forward uses D(0) = 1/3, a constant offset: compare demeaned fields
    err = np.abs(_demeaned(ours) - _demeaned(ref)).max() / np.abs(_demeaned(ref)).max()
    assert err < 1e-12
    assert np.abs(ref).max() > 1e-2  # a real field, not zeros


# --- kernel -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(9, 11, 7), (8, 10, 6)])
def test_kernel_symmetry_dc_and_range(shape):
    b0 = (0.2, -0.5, 0.8)
    D = dipole_kernel(shape, (1.0, 1.2, 0.9), b0, dtype=torch.float64).numpy()
    assert D.shape == shape
    assert D[0, 0, 0] == 0.0
    mirrored = np.roll(D[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))  # D at -k (mod n)
    np.testing.assert_allclose(D, mirrored, atol=1e-15)
    assert D.min() >= -2 / 3 - 1e-12 and D.max() <= 1 / 3 + 1e-12
    half = dipole_kernel(shape, (1.0, 1.2, 0.9), b0, half=True, dtype=torch.float64).numpy()
    np.testing.assert_array_equal(half, D[..., : shape[2] // 2 + 1])


def test_kernel_closed_form_and_magic_angle():
    shape, vs = (13, 11, 15), (1.0, 1.0, 1.5)
    D = dipole_kernel(shape, vs, (0, 0, 1), dtype=torch.float64).numpy()
    k = np.meshgrid(*[np.fft.fftfreq(n, d=v) for n, v in zip(shape, vs, strict=True)], indexing="ij")
    kn = np.sqrt(k[0] ** 2 + k[1] ** 2 + k[2] ** 2)
    kn[0, 0, 0] = 1.0
    theta = np.degrees(np.arccos(np.abs(k[2]) / kn))  # angle between k and B0
    nz = kn > 0
    nz[0, 0, 0] = False
    np.testing.assert_allclose(D[nz], 1 / 3 - np.cos(np.radians(theta[nz])) ** 2, atol=1e-14)
    # sign flips across the 54.7 degree cone; on the axis and the plane, the extremes
    assert np.all(D[nz & (theta < MAGIC_DEG - 0.5)] < 0)
    assert np.all(D[nz & (theta > MAGIC_DEG + 0.5)] > 0)
    assert np.all(np.abs(D[nz & (np.abs(theta - MAGIC_DEG) < 0.5)]) < 0.02)
    assert D[0, 0, 1] == pytest.approx(-2 / 3) and D[1, 0, 0] == pytest.approx(1 / 3)


def test_kernel_rotating_b0_by_90_degrees_transposes_axes():
    shape, vs = (9, 13, 7), (1.0, 1.5, 2.0)
    dx = dipole_kernel(shape, vs, (1, 0, 0), dtype=torch.float64)
    dy = dipole_kernel((13, 9, 7), (1.5, 1.0, 2.0), (0, 1, 0), dtype=torch.float64)
    torch.testing.assert_close(dx, dy.permute(1, 0, 2), rtol=0, atol=1e-15)
    # and a field: B0 along x on chi equals B0 along y on chi with x and y swapped
    chi = torch.from_numpy(_phantom(shape, np.random.default_rng(3), vs))
    fx = forward_field(chi, vs, (1, 0, 0), dtype=torch.float64)
    fy = forward_field(chi.permute(1, 0, 2), (1.5, 1.0, 2.0), (0, 1, 0), dtype=torch.float64)
    torch.testing.assert_close(fx, fy.permute(1, 0, 2), rtol=0, atol=1e-13)


# --- operator ---------------------------------------------------------------------------------

def _dot(a, b):
    return float((a * b).sum())


@pytest.mark.parametrize("pad", [0, True, (3, 0, 5)])
def test_adjointness_batched_geometries(pad):
    shape = (9, 8, 7)
    geoms = [Geometry(shape, (1.0, 1.0, 1.0), (0, 0, 1)), Geometry(shape, (0.7, 1.1, 2.0), (0.4, -0.3, 0.8))]
    op = DipoleOperator(geoms, pad=pad, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    Ax, Aty = op.A(x), op.A_adjoint(y)
    for b in range(2):  # per sample, each with its own geometry
        lhs, rhs = _dot(Ax[b], y[b]), _dot(x[b], Aty[b])
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), 1.0)
        single = DipoleOperator(geoms[b], pad=pad, dtype=torch.float64)
        torch.testing.assert_close(single.A(x[b, 0]), Ax[b, 0], rtol=0, atol=1e-14)
    torch.testing.assert_close(op.normal(x), op.A_adjoint(op.A(x)), rtol=0, atol=1e-13)
    assert not torch.allclose(Ax[0], Ax[1] * 0)  # geometries differ: so do the fields


def test_operator_matrix_is_symmetric_and_normal_is_d_squared():
    shape = (5, 4, 3)  # explicit 60 x 60 matrix, built column by column
    geom = Geometry(shape, (1.0, 1.3, 1.0), (0.5, 0.5, 0.7))
    n = int(np.prod(shape))
    for pad in (0, 2):
        op = DipoleOperator(geom, pad=pad, dtype=torch.float64)
        eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
        A = op.A(eye).reshape(n, n).numpy()
        np.testing.assert_allclose(A, A.T, atol=1e-15)
        N = op.normal(eye).reshape(n, n).numpy()
        np.testing.assert_allclose(N, A @ A, atol=1e-14)
    # unpadded: A is F^-1 D F with D from dipole_kernel
    x = np.random.default_rng(0).standard_normal(shape)
    D = dipole_kernel(shape, geom.voxel_size, geom.b0_dir, dtype=torch.float64).numpy()
    expected = np.real(np.fft.ifftn(D**2 * np.fft.fftn(x)))
    got = DipoleOperator(geom, dtype=torch.float64).normal(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-14)


def test_rotation_consistency():
    """The field of chi under a tilted B0 equals the field of the rotated chi under B0 = z,
    rotated back: f_b(r) = f_z[chi o R](R^T (r - c) + c) with R z = b."""
    n = 31
    c = np.full(3, n // 2, dtype=float)
    R = rotation_matrix((25.0, -15.0, 0.0))
    b = R @ np.array([0.0, 0.0, 1.0])
    centres = [c + d for d in ([2.0, -3.0, 1.0], [-4.0, 2.0, -2.0], [1.0, 4.0, 3.0])]
    sigmas, amps = [2.0, 2.5, 1.8], [0.1, -0.08, 0.12]
    chi = _blobs((n, n, n), centres, sigmas, amps)
    # chi o R, sampled exactly: blob centres move to c + R^T (p - c)
    chi_rot = _blobs((n, n, n), [c + R.T @ (p - c) for p in centres], sigmas, amps)
    f_b = forward_field(chi, b0_dir=b, dtype=torch.float64)
    f_z = forward_field(chi_rot, b0_dir=(0, 0, 1), dtype=torch.float64)
    grid = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")).reshape(3, -1).astype(float)
    coords = R.T @ (grid - c[:, None]) + c[:, None]
    f_back = map_coordinates(f_z, coords, order=3, mode="nearest").reshape(n, n, n)
    r = np.linalg.norm(grid - c[:, None], axis=0).reshape(n, n, n)
    inner = r < 9
    err = _rel_err(f_back[inner], f_b[inner])
    assert err < 0.01  # measured 1.1e-3 (cubic interpolation of the field)
    # the tilt matters: without rotating back the fields disagree grossly
    naive = _rel_err(f_z[inner], f_b[inner])
    assert naive > 10 * err


# --- precision and types ----------------------------------------------------------------------

def test_float32_matches_float64(rng):
    chi = _phantom((15, 13, 11), rng)
    f64 = forward_field(chi, (1.0, 1.0, 2.0), (0.1, 0.2, 0.97), dtype=torch.float64)
    f32 = forward_field(chi.astype(np.float32), (1.0, 1.0, 2.0), (0.1, 0.2, 0.97))
    assert f32.dtype == np.float32 and f64.dtype == np.float64
    assert np.abs(f32 - f64).max() < 1e-5 * np.abs(f64).max()


def test_numpy_in_numpy_out_torch_in_torch_out(rng):
    chi = _phantom((9, 11, 7), rng).astype(np.float32)
    out_np = forward_field(chi)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32 and out_np.shape == chi.shape
    out_t = forward_field(torch.from_numpy(chi))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), out_np, atol=1e-7)
    out_64 = forward_field(torch.from_numpy(chi).double(), dtype=torch.float64)
    assert out_64.dtype == torch.float64
    batch = torch.from_numpy(np.stack([chi, 2 * chi]))[:, None]
    out_b = forward_field(batch)
    assert out_b.shape == (2, 1, *chi.shape)
    torch.testing.assert_close(out_b[1, 0], 2 * out_t, rtol=1e-5, atol=1e-7)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_forward_on_cuda_matches_cpu(rng):
    chi = torch.from_numpy(_phantom((15, 13, 11), rng))
    cpu = forward_field(chi, dtype=torch.float64)
    gpu = forward_field(chi.cuda(), dtype=torch.float64)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-12)


# --- units --------------------------------------------------------------------------------------

def test_units_known_values_and_round_trips():
    assert ppm_to_hz(1.0, 3.0) == pytest.approx(127.732434, rel=1e-6)
    assert ppm_to_hz(1.0, 3.0) == pytest.approx(127.73, abs=5e-3)
    assert hz_to_ppm(127.732434, 3.0) == pytest.approx(1.0, rel=1e-6)
    assert GAMMA_HZ_PER_T == pytest.approx(42.577478e6)
    # 1 ppm at 3 T accrues 2 pi * 127.73 Hz * 20 ms = 16.05 rad at TE = 20 ms
    assert ppm_to_rad(1.0, te=0.02, b0=3.0) == pytest.approx(2 * math.pi * 127.732434 * 0.02, rel=1e-6)
    x = np.linspace(-0.3, 0.3, 11)
    np.testing.assert_allclose(rad_to_ppm(ppm_to_rad(x, 0.015, 7.0), 0.015, 7.0), x, atol=1e-15)
    np.testing.assert_allclose(hz_to_ppm(ppm_to_hz(x, 1.5), 1.5), x, atol=1e-15)
    t = torch.tensor(x)
    assert isinstance(to_ppm(t * 127.732434, "hz", b0=3.0), torch.Tensor)
    torch.testing.assert_close(to_ppm(t * 127.732434, "HZ", b0=3.0), t)
    np.testing.assert_allclose(to_ppm(ppm_to_rad(x, 0.02, 3.0), "rad", b0=3.0, te=0.02), x, atol=1e-15)
    assert to_ppm(x, "ppm") is x
    with pytest.raises(ValueError, match="need b0") as e:  # API words, no CLI flags (the CLI adds those)
        to_ppm(x, "hz")
    assert "--" not in str(e.value)
    with pytest.raises(ValueError, match="te"):
        to_ppm(x, "rad", b0=3.0)
    with pytest.raises(ValueError, match="unknown units"):
        to_ppm(x, "tesla")
    with pytest.raises(ValueError):
        hz_to_ppm(1.0, b0=0.0)


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"te": 20.0, "b0": 3.0}, "milliseconds"),  # TE in ms instead of s: chi would be 1000x too small
        ({"te": 0.02, "b0": 3000.0}, "mT"),
        ({"te": 0.02, "b0": 127.7e6}, "Hz"),
    ],
)
def test_implausible_te_and_b0_are_refused_with_the_expected_unit(kw, expected):
    with pytest.raises(ValueError, match=expected) as e:
        rad_to_ppm(1.0, **kw)
    assert "expected" in str(e.value) and "\n" not in str(e.value)
    assert check_te(0.0045) == 0.0045 and check_b0(0.55) == 0.55 and check_b0(11.7) == 11.7


def test_operators_do_not_share_mutable_kernels():
    g = Geometry((9, 10, 11), (1.0, 1.2, 0.9), (0.1, 0.2, 1.0))
    a, b = DipoleOperator(g), DipoleOperator(g)
    before = b.kernel.clone()
    a.kernel.mul_(0.0)
    torch.testing.assert_close(b.kernel, before)
    torch.testing.assert_close(DipoleOperator(g).kernel, before)


def test_one_residual_definition():
    g = Geometry((9, 10, 11), (1.0, 1.0, 1.0), (0.0, 0.3, 1.0))
    gen = torch.Generator().manual_seed(0)
    chi, field = torch.randn(9, 10, 11, generator=gen), torch.randn(9, 10, 11, generator=gen)
    mask = torch.rand(9, 10, 11, generator=gen) > 0.4
    op = DipoleOperator(g, pad=True)
    fm = field * mask
    ref = np.linalg.norm(((op.A(chi) - field) * mask).numpy()) / np.linalg.norm(fm.numpy())
    assert float(op.residual(chi, field, mask)[0]) == pytest.approx(ref, rel=1e-5)
    assert float(op.residual(chi, field, mask.float() * 7)[0]) == pytest.approx(ref, rel=1e-5)  # binarised


def test_geometry_list_broadcasts_checks_and_reshapes():
    g = Geometry((9, 9, 9))
    assert geometry_list(g, 3) == (g, g, g)
    assert geometry_list([g, g], 2, (5, 5, 5))[1].shape == (5, 5, 5)
    with pytest.raises(ValueError, match="2 geometries for a batch of 3"):
        geometry_list([g, g], 3)
    with pytest.raises(ValueError, match="Geometry"):
        geometry_list([])


# --- geometry -----------------------------------------------------------------------------------

def test_b0_dir_from_axial_flipped_permuted_and_oblique_affines():
    assert b0_dir_from_affine(np.diag([0.5, 0.5, 2.0, 1.0])) == pytest.approx((0, 0, 1))
    assert b0_dir_from_affine(np.diag([-1.0, 1.0, 1.0, 1.0])) == pytest.approx((0, 0, 1))  # LAS
    assert b0_dir_from_affine(np.diag([1.0, 1.0, -3.0, 1.0])) == pytest.approx((0, 0, -1))  # k flipped
    sag = np.zeros((4, 4))
    sag[:3, :3] = [[0, 0, 1.2], [2.0, 0, 0], [0, 0.9, 0]]  # i -> y, j -> z, k -> x (sagittal)
    sag[3, 3] = 1
    assert b0_dir_from_affine(sag) == pytest.approx((0, 1, 0))
    assert not is_oblique(sag)
    # oblique: b0 in voxel axes is world z projected onto each voxel axis direction
    R = rotation_matrix((30.0, -12.0, 40.0))
    aff = np.eye(4)
    aff[:3, :3] = R @ np.diag([0.7, 1.1, 2.5])
    aff[:3, 3] = [5, -7, 9]
    expected = R[2, :] / np.linalg.norm(R[2, :])
    assert b0_dir_from_affine(aff) == pytest.approx(tuple(expected), abs=1e-12)
    Rx, vs = affine_rotation(aff)
    np.testing.assert_allclose(Rx, R, atol=1e-12)
    assert vs == pytest.approx((0.7, 1.1, 2.5))
    assert is_oblique(aff)
    # a pure 30 degree tilt about x: b0 = (0, sin 30, cos 30), tilt 30 degrees
    ax = np.eye(4)
    ax[:3, :3] = rotation_matrix((30.0, 0.0, 0.0))
    g = Geometry.from_affine(ax, (5, 6, 7, 3))
    assert g.b0_dir == pytest.approx((0.0, 0.5, math.sqrt(3) / 2))
    assert g.tilt_deg == pytest.approx(30.0)
    assert g.shape == (5, 6, 7)
    assert not is_oblique(np.diag([1.0, 1.0, 1.0, 1.0]))


def test_geometry_validation_and_normalisation():
    g = Geometry((3, 4, 5), (1, 2, 3), (0, 0, 2))
    assert g.b0_dir == (0.0, 0.0, 1.0)
    assert g.voxel_size == (1.0, 2.0, 3.0)
    assert Geometry((3, 4, 5), b0_dir=(1, 1, 0)).b0_dir == pytest.approx((2**-0.5, 2**-0.5, 0))
    assert g.with_(shape=(7, 7, 7)) == Geometry((7, 7, 7), (1, 2, 3))
    for bad in (
        {"shape": (3, 4)},
        {"shape": (3, 0, 5)},
        {"shape": (3, 4, 5), "voxel_size": (1, -1, 1)},
        {"shape": (3, 4, 5), "voxel_size": (1, float("nan"), 1)},
        {"shape": (3, 4, 5), "b0_dir": (0, 0, 0)},
        {"shape": (3, 4, 5), "b0_dir": (0, float("inf"), 1)},
    ):
        with pytest.raises(ValueError):
            Geometry(**bad)
    with pytest.raises(ValueError):
        affine_rotation(np.diag([1.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        DipoleOperator([Geometry((3, 4, 5)), Geometry((3, 4, 6))])
    with pytest.raises(ValueError, match="shape"):
        DipoleOperator(Geometry((3, 4, 5))).A(torch.zeros(3, 4, 6))
