"""Phantoms and forward simulation: determinism, the dipole model (vs qsm-forward), tissue ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsmnet.physics import Geometry, b0_dir_from_affine, forward_field
from qsmnet.sim import DEFAULT_IMPERFECTIONS, random_b0_dir, shapes_phantom, simulate
from qsmnet.sim.benchmark import geometry_affine
from qsmnet.sim.brain import CHI_RANGES, LABELS, brain_phantom

SHAPE = (21, 19, 17)
VS = (1.0, 1.2, 1.5)


def test_shapes_phantom_deterministic_and_seed_sensitive():
    a = shapes_phantom(SHAPE, VS, 3)
    b = shapes_phantom(SHAPE, VS, 3)
    c = shapes_phantom(SHAPE, VS, 4)
    assert torch.equal(a.chi, b.chi) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.chi, c.chi)
    assert a.chi.shape == SHAPE and a.chi.dtype == torch.float32
    assert torch.all(a.chi[a.mask == 0] == 0)


def test_shapes_values_cover_in_vivo_range():
    vals = torch.cat([shapes_phantom((25, 25, 25), (1, 1, 1), s, n_shapes=30).chi.flatten()
                      for s in range(6)])
    vals = vals[vals != 0]
    assert float(vals.min()) < -0.1 and float(vals.max()) > 0.4
    assert float(vals.min()) > -1.0 and float(vals.max()) < 1.7  # tails bounded


def test_field_is_forward_field_plus_noise_and_matches_qsm_forward():
    qsm_forward = pytest.importorskip("qsm_forward")
    shape = (15, 21, 15)  # 2N = 30, 42, 30 are fast FFT lengths: both codes pad to the same grid
    ph = shapes_phantom(shape, VS, 0)
    b0 = np.array([0.3, -0.2, 1.0]) / np.linalg.norm([0.3, -0.2, 1.0])
    geom = Geometry(shape, VS, tuple(b0))
    sim = simulate(ph.chi, ph.mask, geom, 5, noise_std=0.01, dtype=torch.float64)
    expected = (forward_field(ph.chi.double(), VS, geom.b0_dir, dtype=torch.float64) + sim.noise) * sim.mask
    torch.testing.assert_close(sim.field.double(), expected, atol=1e-6, rtol=0)
    assert abs(float(sim.noise.std()) - 0.01) < 0.002
    # independent oracle: qsm-forward's 2x zero-padded convolution. It pads with chi[-1,-1,-1]
    # (zero here), swaps vx/vy ('xy' meshgrid) and uses D(0) = 1/3: compare demeaned fields.
    chi = ph.chi.double().numpy()
    assert chi[-1, -1, -1] == 0
    ref = qsm_forward.generate_field(chi, voxel_size=[VS[1], VS[0], VS[2]], B0_dir=list(b0))
    ours = sim.clean_field.double().numpy()
    ref, ours = ref - ref.mean(), ours - ours.mean()
    assert np.abs(ref).max() > 1e-2
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


def test_simulate_snr_definition_and_determinism():
    ph = shapes_phantom(SHAPE, VS, 1)
    geom = Geometry(SHAPE, VS)
    s1 = simulate(ph.chi, ph.mask, geom, 7, snr=10.0)
    s2 = simulate(ph.chi, ph.mask, geom, 7, snr=10.0)
    assert torch.equal(s1.field, s2.field)
    spread = float(s1.clean_field[ph.mask > 0].std())
    assert s1.noise_std == pytest.approx(spread / 10.0, rel=1e-5)


def test_imperfections_switch_and_stay_inside_mask():
    ph = shapes_phantom(SHAPE, VS, 2)
    geom = Geometry(SHAPE, VS)
    base = simulate(ph.chi, ph.mask, geom, 1)
    assert not any(base.applied.values())
    allon = {k: True for k in DEFAULT_IMPERFECTIONS}
    sim = simulate(ph.chi, ph.mask, geom, 1, imperfections=allon)
    assert all(sim.applied.values())
    assert torch.all(sim.field[sim.mask == 0] == 0)
    assert torch.all(sim.mask <= ph.mask)
    assert not torch.allclose(sim.field, base.field * sim.mask)
    assert sim.phase.shape == (5, *SHAPE) and float(sim.phase.abs().max()) <= math.pi + 1e-5
    off = simulate(ph.chi, ph.mask, geom, 1, imperfections={"nondipolar": 0.0})
    assert not off.applied["nondipolar"]
    with pytest.raises(ValueError, match="unknown imperfections"):
        simulate(ph.chi, ph.mask, geom, 1, imperfections={"bogus": True})
    from qsmnet.cli.simulate import _IMPERFECTIONS  # the CLI's choices, kept import-free

    assert set(_IMPERFECTIONS) == set(DEFAULT_IMPERFECTIONS)


def test_residual_background_is_smooth_low_order():
    ph = shapes_phantom(SHAPE, VS, 2, mask=False)
    geom = Geometry(SHAPE, VS)
    base = simulate(ph.chi, ph.mask, geom, 3)
    bg = simulate(ph.chi, ph.mask, geom, 3, imperfections={"background_residual": True}).field - base.field
    assert 0.004 < float(bg.abs().max()) < 0.031
    # a polynomial of degree <= 2: third differences vanish along every axis
    for ax in range(3):
        d3 = torch.diff(bg.double(), n=3, dim=ax)
        assert float(d3.abs().max()) < 1e-5


def test_bfr_remnant_fades_from_the_edge_and_keeps_other_streams():
    from qsmnet.sim.forward import REMNANT_DECAY_MM, bfr_remnant, edge_distance

    n, vs = 48, (1.0, 1.0, 1.0)
    x = torch.arange(n, dtype=torch.float32) - (n - 1) / 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    mask = (r2 <= 21.0**2).float()  # a 42 mm ball
    d = edge_distance(mask, vs)
    rim, core = (mask > 0) & (d <= 3.0), (mask > 0) & (d >= 12.0)
    ms_rim = ms_core = 0.0
    for seed in range(6):
        e = bfr_remnant(mask, vs, np.random.default_rng(seed), edge_ppm=0.01)
        assert torch.all(e[mask == 0] == 0)
        ms_rim += float(e[rim].double().square().mean())
        ms_core += float(e[core].double().square().mean())
    # exp(-d / 10 mm): <= 3 mm keeps >= 0.74 of the edge amplitude, >= 12 mm at most 0.30 of it
    assert REMNANT_DECAY_MM == 10.0
    assert math.sqrt(ms_rim / ms_core) > 2.0
    assert 0.004 < math.sqrt(ms_rim / 6) < 0.012  # ~edge_ppm x exp(-1.5 / 10) for a unit-std texture
    # switched on in simulate: the same noise and other imperfections, plus the remnant in the mask
    g = Geometry((n, n, n), vs)
    chi = 0.1 * mask
    imp = {"background_residual": True}
    off = simulate(chi, mask, g, 5, noise_std=0.002, imperfections=imp)
    on = simulate(chi, mask, g, 5, noise_std=0.002, imperfections={**imp, "bfr_remnant": True})
    assert on.applied["bfr_remnant"] and not off.applied["bfr_remnant"]
    assert torch.equal(on.noise, off.noise)
    diff = on.field - off.field
    assert torch.all(diff[mask == 0] == 0) and float(diff[rim].abs().max()) > 1e-3


def test_random_b0_dir_within_tilt():
    rng = np.random.default_rng(0)
    tilts = [Geometry((3, 3, 3), b0_dir=random_b0_dir(rng, 45.0)).tilt_deg for _ in range(200)]
    assert max(tilts) <= 45.0 + 1e-6 and max(tilts) > 35.0


def test_geometry_affine_encodes_b0_and_voxel_size():
    g = Geometry((9, 11, 7), (0.8, 0.8, 2.0), (0.0, math.sin(math.radians(30)), math.cos(math.radians(30))))
    a = geometry_affine(g)
    np.testing.assert_allclose(b0_dir_from_affine(a), g.b0_dir, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(a[:3, :3], axis=0), g.voxel_size, atol=1e-12)
    assert Geometry.from_affine(a, g.shape).tilt_deg == pytest.approx(30.0)


def test_brain_phantom_deterministic_any_grid():
    a = brain_phantom((17, 19, 15), (2.0, 2.0, 3.0), 11)
    b = brain_phantom((17, 19, 15), (2.0, 2.0, 3.0), 11)
    assert torch.equal(a.chi, b.chi) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.chi, brain_phantom((17, 19, 15), (2.0, 2.0, 3.0), 12).chi)
    frac = float(a.mask.mean())
    assert 0.2 < frac < 0.8  # a brain fitted to the field of view, not the whole box
    assert torch.all(a.chi[a.mask == 0] == 0) and torch.all(a.labels[a.mask == 0] == 0)


def test_brain_tissue_statistics_in_stated_ranges():
    # zoom on the deep grey matter at real size: 31^3 voxels of 2 mm around MNI (0, -10, 0)
    ph = brain_phantom((31, 31, 31), (2.0, 2.0, 2.0), 5, scale=1.0, centre_mni=(0.0, -10.0, 0.0))
    for k, (lo, hi) in CHI_RANGES.items():
        assert lo <= ph.info["values_ppm"][k] <= hi
    med = {k: float(ph.chi[ph.labels == v].median()) for k, v in LABELS.items() if (ph.labels == v).sum() > 5}
    for nucleus in ("caudate", "putamen", "globus_pallidus", "substantia_nigra", "red_nucleus"):
        assert 0.04 <= med[nucleus] <= 0.21, (nucleus, med[nucleus])
    assert 0.0 <= med["thalamus"] <= 0.06
    assert -0.05 <= med["white_matter"] <= -0.01
    assert -0.005 <= med["grey_matter"] <= 0.04
    assert abs(med["csf"]) <= 0.005
    assert 0.28 <= med["vein"] <= 0.52
    assert med["white_matter"] < med["csf"] < med["grey_matter"] < med["caudate"]
