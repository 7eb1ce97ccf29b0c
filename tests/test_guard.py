"""The out-of-domain guard on network predictions, and the default method."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import qsm_forward
import torch

from qsmnet.errors import QSMNetError
from qsmnet.inference.guard import DEFAULT_LIMITS, GuardedMethod, assess
from qsmnet.physics import Geometry
from qsmnet.solvers import SOLVERS

N = 21


@pytest.fixture
def blob():
    """A seeded 21^3 sphere of smooth sources, its qsm-forward field (ppm) with a little noise."""
    rng = np.random.default_rng(3)
    x = np.stack(np.meshgrid(*[np.arange(N) - N // 2] * 3, indexing="ij")).astype(float)
    mask = ((x / (0.45 * N)) ** 2).sum(0) < 1
    chi = np.zeros((N, N, N))
    for _ in range(4):
        c = rng.uniform(-4, 4, (3, 1, 1, 1))
        chi += rng.uniform(-0.1, 0.1) * np.exp(-((x - c) ** 2).sum(0) / 6.0)
    field = qsm_forward.generate_field(chi * mask, mask) * mask + 1e-4 * rng.standard_normal(mask.shape)
    g = Geometry(shape=(N, N, N), voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0))
    return torch.from_numpy(field.astype(np.float32)), torch.from_numpy(mask.astype(np.float32)), g


def test_reference_keeps_the_weight_the_limits_were_calibrated_with(blob):
    # With model error in the field Tikhonov's default weight is the Wiener balance, not the
    # cone-power rule the limits were set with; the guard's reference stays at the latter.
    f, m, g = blob
    noise = torch.randn((1, 1, N, N, N), generator=torch.Generator().manual_seed(2))
    bumps = torch.nn.functional.avg_pool3d(noise, 3, 1, 1)[0, 0]
    f = (f + bumps / bumps[m > 0].std() * f[m > 0].std()) * m
    info_auto, info_model = {}, {}
    auto = SOLVERS["tikhonov"](f, m, g, info=info_auto)
    model = SOLVERS["tikhonov"](f, m, g, lam="model", info=info_model)
    assert info_auto["lambda_method"] == "wiener" and info_model["lambda_method"] == "model"
    assert abs(info_auto["lambda"] / info_model["lambda"] - 1) > 0.1
    assert assess(model, f, m, g)["stats"]["residual_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert assess(auto, f, m, g)["stats"]["residual_ratio"] != pytest.approx(1.0, abs=1e-4)


def test_closed_form_is_in_domain_with_unit_ratios(blob):
    f, m, g = blob
    v = assess(SOLVERS["tikhonov"](f, m, g, lam="model"), f, m, g)
    assert v["in_domain"] and not v["reasons"]
    s = v["stats"]
    assert s["std_ratio"] == pytest.approx(1.0) and s["cone_ratio"] == pytest.approx(1.0)
    assert s["correlation"] == pytest.approx(1.0, abs=1e-4) and s["residual_ratio"] == pytest.approx(1.0)


def test_residual_is_the_one_definition(blob):
    from qsmnet.physics import DipoleOperator

    f, m, g = blob
    chi = SOLVERS["tkd"](f, m, g)
    expected = float(
        DipoleOperator(g, pad=True).residual(torch.as_tensor(chi), torch.as_tensor(f), torch.as_tensor(m))[0]
    )
    assert assess(chi, f, m, g)["stats"]["residual"] == pytest.approx(expected, rel=1e-3)


def test_amplified_streaky_prediction_is_flagged(blob):
    """Tikhonov plus energy on the dipole cone (what a network's streaks are) scaled up 2x."""
    from qsmnet.physics import dipole_kernel

    f, m, g = blob
    ref = SOLVERS["tikhonov"](f, m, g)
    cone = dipole_kernel(g.shape, g.voxel_size, g.b0_dir).abs() < 0.1
    noise = torch.fft.ifftn(torch.randn(g.shape) * cone).real
    bad = 2.0 * (ref + noise * ref[m > 0].std() / noise[m > 0].std()) * m
    v = assess(bad, f, m, g, reference=ref)
    assert not v["in_domain"]
    assert any(r.startswith("std_ratio") for r in v["reasons"])
    assert any(r.startswith("cone_ratio") for r in v["reasons"])
    assert v["stats"]["std_ratio"] > DEFAULT_LIMITS["std_ratio"][1]


def test_guarded_method_falls_back_to_tv_only_when_flagged(blob, caplog):
    f, m, g = blob

    def fake(field, mask, geometry, *, info=None, gain: float = 1.0):
        return gain * SOLVERS["tikhonov"](field, mask, geometry)

    fake.name = "fake"
    guard = GuardedMethod(fake, fallback="tv")
    info: dict = {}
    ok = guard(f, m, g, info=info, gain=1.0)
    assert info["guard"]["in_domain"] and info["guard"]["returned"] == "fake"
    assert torch.equal(ok, SOLVERS["tikhonov"](f, m, g))
    info = {}
    out = guard(f, m, g, info=info, gain=3.0)
    assert not info["guard"]["in_domain"] and info["guard"]["returned"] == "tv"
    assert torch.allclose(out, SOLVERS["tv"](f, m, g))
    assert "returning the tv solution" in caplog.text


def test_predict_fallback_writes_guard_in_sidecar(tmp_path, capsys):
    from qsmnet.cli.main import main
    from qsmnet.models.io import available

    if "unet" not in available():
        pytest.skip("no shipped unet")
    rng = np.random.default_rng(0)
    x = np.stack(np.meshgrid(*[np.arange(15) - 7] * 3, indexing="ij")).astype(float)
    mask = ((x / 6.3) ** 2).sum(0) < 1
    chi = 0.1 * np.exp(-((x - rng.uniform(-2, 2, (3, 1, 1, 1))) ** 2).sum(0) / 8.0) * mask
    field = (qsm_forward.generate_field(chi, mask) * mask).astype(np.float32)
    for name, vol in (("field", field), ("mask", mask.astype(np.uint8))):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "chi.nii.gz"
    argv = ["predict", str(tmp_path / "field.nii.gz"), "--mask", str(tmp_path / "mask.nii.gz"), "-o",
            str(out), "--device", "cpu", "--method", "unet", "--flips", "1", "--fallback", "tv"]  # fmt: skip
    assert main(argv) == 0
    side = json.loads(out.with_suffix("").with_suffix(".json").read_text())
    assert side["method"] == "unet" and side["guard"]["returned"] in ("unet", "tv")
    said = capsys.readouterr().out  # the summary line names the fallback when it was returned
    assert ("flagged out of domain, tv returned" in said) == (side["guard"]["returned"] == "tv"), said
    assert set(side["guard"]["stats"]) >= {"residual", "std_ratio", "cone_ratio", "correlation"}


def test_default_network_runs_under_its_guard(blob, tmp_path, monkeypatch):
    """"default" is TV while no network is cleared; a network cleared as the default
    (``default_ready``) runs under its out-of-domain guard with TV as the fallback wherever
    "default" is asked for, and bare when called by its name."""
    from qsmnet.inference.methods import DEFAULT_ALIAS, default_method, load_method
    from qsmnet.models import io as mio

    shipped = tmp_path / "w"
    monkeypatch.setattr(mio, "WEIGHTS_DIR", shipped)
    assert (load_method(DEFAULT_ALIAS).name, load_method(DEFAULT_ALIAS).kind) == ("tv", "solver")
    cfg = {"_target_": "qsmnet.models.QSMUNet", "channels": [4, 8], "strides": [2], "num_res_units": 0}
    # limits no prediction can meet (correlation above 1), so the guard flags every answer
    extra = {"default_ready": True, "guard": {"correlation": [1.01, None]}}
    mio.save_weights(mio.build_network(cfg), cfg, shipped / "unet", extra=extra)
    assert default_method(quiet=True) == "unet"
    m = load_method(DEFAULT_ALIAS)
    assert m.kind == "network" and isinstance(m.fn, GuardedMethod) and m.fn.fallback == "tv"
    assert not isinstance(load_method("unet").fn, GuardedMethod)
    with pytest.raises(QSMNetError, match=r"lam \(it is the default method; .* --method tv\)"):
        m.check_params({"lam": 1e-3})  # a solver option given without --method
    f, msk, g = blob
    res = m(f, msk, g, flips=1)
    assert res.info["guard"]["returned"] == "tv" and not res.info["guard"]["in_domain"]
    assert torch.allclose(res.chi, SOLVERS["tv"](f, msk, g))
