"""qsmnet.inference: method lookup, network wrapper, memory plan, sliding windows, refinement, batches."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import qsm_forward
import torch
from torch import nn

from qsmnet.errors import QSMNetError
from qsmnet.inference import (
    NetworkMethod,
    default_method,
    find_bids_subjects,
    get_method,
    predict_many,
    read_subject_list,
)
from qsmnet.inference import windows as W
from qsmnet.models import io as mio
from qsmnet.physics import Geometry

TINY_LPCNN = {"_target_": "qsmnet.models.LPCNN", "iterations": 2, "features": 4, "depth": 2}
TINY_UNET = {
    "_target_": "qsmnet.models.QSMUNet",
    "channels": [4, 8, 16],
    "strides": [2, 2],
    "num_res_units": 0,
}


def tiny_weights(stem, cfg=TINY_LPCNN, extra=None):
    """Untrained network weights at ``stem`` (.safetensors + .json); returns the .safetensors path."""
    return mio.save_weights(mio.build_network(cfg), cfg, stem, extra=extra)


def phantom(n=24, seed=0, b0_dir=(0.0, 0.0, 1.0)):
    """(chi, field, mask) numpy float32/bool: smooth blobs in a sphere, field by qsm-forward (oracle)."""
    rng = np.random.default_rng(seed)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2] * 3, indexing="ij")).astype(float)
    mask = ((x / (0.42 * n)) ** 2).sum(0) < 1
    c = rng.uniform(-n / 5, n / 5, (5, 3, 1, 1, 1))
    chi = sum(0.1 * np.exp(-((x - ci) ** 2).sum(0) / 6.0) for ci in c) * mask
    field = qsm_forward.generate_field(chi, mask, B0_dir=list(b0_dir)) * mask
    return chi.astype(np.float32), field.astype(np.float32), mask


def rel(a, b, m):
    return float(np.linalg.norm((a - b)[m]) / np.linalg.norm(b[m]))


def test_get_method_solvers_networks_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(mio, "WEIGHTS_DIR", tmp_path / "shipped")
    from qsmnet.solvers import SOLVERS

    assert get_method("tikhonov") is SOLVERS["tikhonov"]
    path = tiny_weights(tmp_path / "mine")
    m = get_method(str(path))
    assert isinstance(m, NetworkMethod) and m.name == "mine" and m.version.startswith("sha256:")
    tiny_weights(tmp_path / "shipped" / "lpcnn")
    assert get_method("lpcnn").name == "lpcnn"
    with pytest.raises(QSMNetError, match="unknown method"):
        get_method("nope")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a tensor file")
    bad.with_suffix(".json").write_text('{"model": {"_target_": "qsmnet.models.LPCNN"}}')
    with pytest.raises(QSMNetError, match="cannot load"):
        get_method(str(bad))


def test_default_method_prefers_unet_and_falls_back_to_tv(tmp_path, monkeypatch, capsys):
    from qsmnet.logs import setup_logging

    setup_logging()  # the note goes to the qsmnet logger's stderr handler, as under the CLI
    shipped = tmp_path / "w"
    monkeypatch.setattr(mio, "WEIGHTS_DIR", shipped)
    assert default_method() == "tv"
    assert "no network weights" in capsys.readouterr().err
    tiny_weights(shipped / "lpcnn")  # shipped, but not cleared as beating TV: TV stays the default
    assert default_method() == "tv"
    assert "do not beat TV" in capsys.readouterr().err
    tiny_weights(shipped / "lpcnn", extra={"default_ready": True})
    assert default_method() == "lpcnn"
    tiny_weights(shipped / "unet", TINY_UNET, extra={"default_ready": True})
    assert default_method() == "unet"
    assert isinstance(get_method("default"), NetworkMethod)
    import qsmnet.inference as inf

    assert inf.DEFAULT_METHOD == "unet"


class _Smooth(nn.Module):
    """A local 'network' (3x3x3 box filter): windowed and whole-volume results must match exactly."""

    def forward(self, field, mask, geometry):
        return nn.functional.avg_pool3d(field, 3, stride=1, padding=1) * mask


def test_sliding_windows_exact_for_a_local_operator():
    _, field, mask = phantom(22, seed=1)
    f = torch.from_numpy(field)[None, None]
    m = torch.from_numpy(mask).float()[None, None]
    net = _Smooth()
    whole = net(f, m, None)
    for multiple in (1, 4):
        win = W.sliding_windows(lambda a, b: net(a, b, None), f, m, (12, 12, 16), 0.5, multiple)
        np.testing.assert_allclose(win.numpy(), whole.numpy(), atol=2e-3 * float(whole.abs().max()))


def test_windows_agree_with_whole_volume():
    """The dipole inverse is nonlocal, so windows only approximate the whole-volume result: on
    32^3 with 24^3 windows (50 % overlap, context margins) the untrained LPCNN (a Tikhonov start
    plus data-consistency steps, the most nonlocal case) agrees within 25 % inside the mask
    (measured 0.22; 0.16-0.19 at 48^3) and the error against the truth grows by under 25 %."""
    chi, field, mask = phantom(32, seed=2)
    nm = NetworkMethod(mio.build_network(TINY_LPCNN))
    g = Geometry(field.shape)
    whole_info, win_info = {}, {}
    whole = nm(torch.from_numpy(field), torch.from_numpy(mask), g, window="off", info=whole_info).numpy()
    win = nm(torch.from_numpy(field), torch.from_numpy(mask), g, window=24, info=win_info).numpy()
    assert whole_info["inference"]["mode"] == "whole" and win_info["inference"]["mode"] == "windows"
    assert win_info["inference"]["window"] == [24, 24, 24]
    assert rel(win, whole, mask) < 0.25
    assert rel(win, chi, mask) < 1.25 * rel(whole, chi, mask)
    assert np.all(win[~mask] == 0)


def test_memory_plan():
    net = mio.build_network(TINY_LPCNN)
    cpu = torch.device("cpu")
    shape = (160, 160, 160)
    need = W.estimate_bytes(net, 160**3)
    assert W.plan(net, shape, cpu, max_memory=2 * need)["mode"] == "whole"
    p = W.plan(net, shape, cpu, max_memory=need / 8)
    assert p["mode"] == "windows" and p["roi"][0] % 16 == 0 and p["estimate_bytes"] <= need / 8
    assert W.plan(net, shape, cpu, window=40)["roi"] == (40, 40, 40)
    assert W.plan(net, shape, cpu, window="off", max_memory=1)["mode"] == "whole"
    assert W.estimate_bytes(net, 1000, train=True) > W.estimate_bytes(net, 1000)
    assert W.available_bytes(cpu) > 0


def test_refine_lowers_residual_and_keeps_the_loaded_network():
    _, field, mask = phantom(20, seed=3)
    nm = NetworkMethod(mio.build_network(TINY_UNET))
    before = {k: v.clone() for k, v in nm.net.state_dict().items()}
    info = {}
    nm(
        torch.from_numpy(field),
        torch.from_numpy(mask),
        Geometry(field.shape),
        refine=4,
        refine_lr=1e-3,
        info=info,
    )
    r = info["refine"]
    assert r["steps"] == 4 and r["mode"] == "whole"
    assert r["residual_after"] < 0.9 * r["residual_before"]
    assert all(torch.equal(v, nm.net.state_dict()[k]) for k, v in before.items())
    # Windowed refinement (tight memory budget) runs on windows and still reports both residuals.
    info = {}
    nm(torch.from_numpy(field), torch.from_numpy(mask), Geometry(field.shape), refine=2, window=16, info=info)
    assert info["refine"]["mode"] == "windows" and np.isfinite(info["refine"]["residual_after"])


def test_fixed_resolution_network_resamples_and_returns_to_the_input_grid():
    chi, field, mask = phantom(24, seed=4)
    net = mio.build_network(TINY_LPCNN)
    g = Geometry(field.shape, (1.0, 1.0, 1.0))
    ref = NetworkMethod(net)(torch.from_numpy(field), torch.from_numpy(mask), g).numpy()
    info = {}
    fixed = NetworkMethod(net, {"voxel_size": [1.5, 1.5, 1.5]})
    out = fixed(torch.from_numpy(field), torch.from_numpy(mask), g, info=info).numpy()
    assert out.shape == field.shape and np.all(out[~mask] == 0)
    assert info["inference"]["resampled_to_mm"] == [1.5, 1.5, 1.5]
    assert np.corrcoef(out[mask], ref[mask])[0, 1] > 0.8
    assert rel(out, ref, mask) > 1e-3  # it really went through another grid


def test_training_ranges_and_geometry_warnings():
    net = mio.build_network(TINY_LPCNN)
    train = {
        "data": {"train": {"max_tilt_deg": 30.0, "voxel_size_range": [[0.8, 0.8, 0.8], [1.5, 1.5, 3.0]]}}
    }
    nm = NetworkMethod(net, {"train_config": train}, name="t")
    assert nm.ranges == {"max_tilt_deg": 30.0, "voxel_mm": (0.8, 3.0), "source": "training config"}
    assert nm.check_geometry(Geometry((8, 8, 8), (1, 1, 2), (0, 0.3, 1))) == []
    warns = nm.check_geometry(Geometry((8, 8, 8), (0.5, 1, 1), (1, 0, 1)))
    assert len(warns) == 2 and "45.0 deg" in warns[0] and "0.5 x 1 x 1 mm" in warns[1]
    assert NetworkMethod(net).ranges["source"] == "default"
    # a precomputed dataset's specs (a list under "simulation"): the union of their ranges
    sims = [{"max_tilt_deg": 45.0, "voxel_size_range": [[0.9, 0.9, 0.9], [1.2, 1.2, 1.2]]},
            {"max_tilt_deg": 30.0, "voxel_size_range": [[0.9, 0.9, 1.8], [1.2, 1.2, 2.4]]}]
    nm = NetworkMethod(net, {"train_config": {"data": {"train": {"simulation": sims}}}}, name="t")
    assert nm.ranges == {"max_tilt_deg": 45.0, "voxel_mm": (0.9, 2.4), "source": "training config"}
    # head simulations acquire `factors` fine voxels as one: 1-1.2 mm with factors (1, 1, 2) is 1-2.4 mm
    heads = [{"max_tilt_deg": 45.0, "voxel_size_range": [[1.0] * 3, [1.2] * 3], "factors": f}
             for f in ([1, 1, 1], [1, 1, 2])]
    nm = NetworkMethod(net, {"train_config": {"data": {"train": {"simulation": heads}}}}, name="t")
    assert nm.ranges["voxel_mm"] == (1.0, 2.4)
    assert nm.check_geometry(Geometry((8, 8, 8), (1.1, 1.1, 2.2))) == []
    assert len(nm.check_geometry(Geometry((8, 8, 8), (0.86, 0.86, 2.0)))) == 1  # 0.86 mm in-plane


def _write_subject(folder, stem, field, mask, affine=None):
    affine = np.eye(4) if affine is None else affine
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(field, affine), folder / f"{stem}_Localfield.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), folder / f"{stem}_mask.nii.gz")


def test_bids_and_list_discovery(tmp_path):
    _, field, mask = phantom(12)
    _write_subject(tmp_path / "sub-01" / "anat", "sub-01", field, mask)
    _write_subject(
        tmp_path / "derivatives" / "qsm" / "sub-02" / "ses-1" / "anat", "sub-02_ses-1", field, mask
    )
    subjects = find_bids_subjects(tmp_path)
    outs = sorted(str(s.out.relative_to(tmp_path)) for s in subjects)
    assert outs == [
        "derivatives/qsmnet/sub-01/anat/sub-01_Chimap.nii.gz",
        "derivatives/qsmnet/sub-02/ses-1/anat/sub-02_ses-1_Chimap.nii.gz",
    ]
    assert all(s.mask.name.replace("_mask", "_Localfield") == s.field.name for s in subjects)
    lst = tmp_path / "list.txt"
    lst.write_text("# field mask out\na.nii b.nii out/c.nii.gz\n\n")
    (s,) = read_subject_list(lst)
    assert s.field == tmp_path / "a.nii" and s.out == tmp_path / "out" / "c.nii.gz"
    lst.write_text("a.nii b.nii\n")
    with pytest.raises(QSMNetError, match="list.txt:1"):
        read_subject_list(lst)
    with pytest.raises(QSMNetError, match="no \\*_Localfield"):
        find_bids_subjects(tmp_path / "sub-01" / "anat")


def test_predict_many_loads_once_and_continues_after_a_failure(tmp_path, monkeypatch):
    _, field, mask = phantom(12)
    _write_subject(tmp_path / "sub-01" / "anat", "sub-01", field, mask)
    _write_subject(tmp_path / "sub-02" / "anat", "sub-02", field, mask)
    (tmp_path / "sub-02" / "anat" / "sub-02_mask.nii.gz").write_bytes(b"broken")
    loads = []
    real = NetworkMethod.load
    monkeypatch.setattr(
        NetworkMethod, "load", classmethod(lambda cls, p: loads.append(p) or real.__func__(cls, p))
    )
    lines = []
    net = str(tiny_weights(tmp_path / "net"))
    subjects = find_bids_subjects(tmp_path)
    res = predict_many(subjects, net, progress=False, make_dirs=True, report=lines.append, device="cpu")
    assert len(loads) == 1 and [("error" in r) for r in res] == [False, True]
    assert len(lines) == 1 and "sub-02_Localfield" in lines[0] and "not a NIfTI" in lines[0]
    assert res[0]["subject"].out.is_file() and not res[1]["subject"].out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_cuda_matches_float32():
    chi, field, mask = phantom(24)
    nm = NetworkMethod(mio.build_network(TINY_UNET))
    f, m = torch.from_numpy(field).cuda(), torch.from_numpy(mask).cuda()
    g = Geometry(field.shape)
    full = nm(f, m, g).cpu().numpy()
    info = {}
    half = nm(f, m, g, half=True, info=info).cpu().numpy()
    assert info["half"] is True and half.dtype == np.float32
    assert rel(half, full, mask) < 0.02


def test_flip_averaging_carries_the_geometry_along():
    from qsmnet.inference.network import FLIPS

    _, field, mask = phantom(n=21, seed=4, b0_dir=(0.3, -0.2, 0.93))
    g = Geometry(field.shape, (1.0, 0.9, 1.6), (0.3, -0.2, 0.93))
    f, m = torch.from_numpy(field), torch.from_numpy(mask.astype(np.float32))
    # A U-Net whose correction is zero answers its Tikhonov estimate, which is flip-equivariant only
    # if each flipped copy gets its flipped geometry: then averaging changes nothing.
    zero = mio.build_network(TINY_UNET)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    plain = NetworkMethod(zero, name="t")
    torch.testing.assert_close(plain(f, m, g, window="off", flips=8), plain(f, m, g, window="off", flips=1),
                               rtol=0, atol=1e-6)
    # A trained-like (perturbed) U-Net is not equivariant: flips=4 is the mean of four answers.
    net = mio.build_network(TINY_UNET)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    method = NetworkMethod(net, name="t")
    f5, m5 = f[None, None], m[None, None]
    with torch.no_grad():
        ref = sum(t.apply(net(t.apply(f5), t.apply(m5), (t.geometry(g),))) for t in FLIPS[:4]) / 4
    one, four = method(f, m, g, window="off", flips=1), method(f, m, g, window="off", flips=4)
    torch.testing.assert_close(four, ref[0, 0] * m, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(one, four)
    with pytest.raises(QSMNetError, match="flips"):
        method(f, m, g, flips=3)


def test_inference_modules_import_no_cycle():
    """``inference/network.py`` and ``inference/refine.py`` once imported each other (lazily)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "qsmnet" / "inference"
    graph = {}
    for p in root.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                deps.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qsmnet.inference."):
                deps.add(node.module.split(".")[2])
        graph[p.stem] = deps - {p.stem}

    def reach(a, seen):
        for b in graph.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(a for a in graph if a != "__init__" and a in reach(a, set()))
    assert not cycles, cycles


def test_data_consistency_matches_the_closed_form_without_a_mask():
    # With M = 1 (periodic operator, no padding) the minimiser of ||D chi - f||^2 + mu ||chi - chi_net||^2
    # is F^-1[(D F f + mu F chi_net) / (D^2 + mu)]; D from the textbook formula, in NumPy.
    from qsmnet.inference.consistency import data_consistency

    rng = np.random.default_rng(5)
    # odd grids: no Nyquist sample, whose symmetrisation under an oblique B0 is a convention
    shape, vs, b0 = (13, 11, 9), (1.0, 1.2, 2.0), np.array([0.3, 0.2, 0.9])
    b0 = b0 / np.linalg.norm(b0)
    f = rng.standard_normal(shape).astype(np.float32) * 0.01
    net = rng.standard_normal(shape).astype(np.float32) * 0.02
    f, net = f - f.mean(), net - net.mean()  # k = 0 drops out, whatever D(0) is
    k = np.meshgrid(*[np.fft.fftfreq(n, d) for n, d in zip(shape, vs, strict=True)], indexing="ij")
    k2 = sum(ki**2 for ki in k)
    kb = sum(ki * bi for ki, bi in zip(k, b0, strict=True))
    d = 1 / 3 - np.divide(kb**2, k2, out=np.zeros_like(k2), where=k2 > 0)
    mu = 0.3
    ref = np.real(np.fft.ifftn((d * np.fft.fftn(f) + mu * np.fft.fftn(net)) / (d**2 + mu)))
    geom = Geometry(shape, vs, tuple(b0))
    ones = torch.ones(shape)
    chi, info = data_consistency(torch.from_numpy(net), torch.from_numpy(f), ones, geom, mu, 300, 1e-7)
    np.testing.assert_allclose(chi.numpy(), ref, atol=1e-4 * np.abs(ref).max())
    assert info["residual_after"] < info["residual_before"] and info["mu"] == mu
    with pytest.raises(ValueError, match="> 0"):
        data_consistency(torch.from_numpy(net), torch.from_numpy(f), ones, geom, 0.0)


def test_auto_dc_weight_leaves_a_noise_only_residual_and_restores_an_under_fit_strong_source():
    # field by qsm-forward (oracle) of smooth blobs plus a 1 ppm sphere (a haematoma), with white
    # noise: the truth's residual is the noise alone (no tail once smoothed: no step, answer unchanged);
    # an answer missing 80 % of the sphere leaves a smooth localised residual (heavy tail: a step).
    from qsmnet.inference.consistency import AUTO_DETECT, AUTO_MU_GRID, data_consistency, residual_levels
    from qsmnet.solvers.base import prepare

    chi, _, mask = phantom(32, seed=3)
    x = np.stack(np.meshgrid(*[np.arange(32) - 16] * 3, indexing="ij")).astype(float)
    sphere = (((x - np.array([5.0, -4.0, 3.0])[:, None, None, None]) ** 2).sum(0) < 9) & mask
    chi = chi + sphere.astype(np.float32)
    clean = qsm_forward.generate_field(chi, mask) * mask
    noise = np.random.default_rng(1).standard_normal(chi.shape) * 0.3 * clean[mask].std()
    f = torch.from_numpy(((clean + noise) * mask).astype(np.float32))
    m, geom = torch.from_numpy(mask.astype(np.float32)), Geometry(chi.shape)

    kept, info = data_consistency(torch.from_numpy(chi), f, m, geom, "auto")
    assert info["mu"] is None and info["auto"]["tail_smoothed"] < AUTO_DETECT
    torch.testing.assert_close(kept, torch.from_numpy(chi) * m)

    missing = chi - 0.8 * sphere.astype(np.float32)
    out, info = data_consistency(torch.from_numpy(missing), f, m, geom, "auto")
    auto = info["auto"]
    assert auto["tail_smoothed"] > 2 * AUTO_DETECT and auto["rms_net"] > 1.5 * auto["target"]
    assert info["mu"] in AUTO_MU_GRID
    assert auto["rms_after"] <= auto["target"] and info["residual_after"] < info["residual_before"]
    assert auto["tried"] == list(AUTO_MU_GRID[: len(auto["tried"])])  # largest weight first
    assert rel(out.numpy(), chi, mask) < 0.8 * rel(missing, chi, mask)
    # the chosen weight is the largest that meets the target: the one before it does not
    assert len(auto["tried"]) > 1
    up, _ = data_consistency(torch.from_numpy(missing), f, m, geom, auto["tried"][-2])
    assert residual_levels(up[None, None], prepare(f, m, geom))[0] > auto["target"]


def test_network_dc_step_lowers_the_residual_and_a_large_weight_keeps_the_answer():
    _, field, mask = phantom(20, seed=4)
    nm = NetworkMethod(mio.build_network(TINY_UNET))
    args = (torch.from_numpy(field), torch.from_numpy(mask), Geometry(field.shape))
    plain = nm(*args, flips=1)
    info = {}
    dc = nm(*args, flips=1, dc=0.1, info=info)
    assert info["dc"]["residual_after"] < 0.9 * info["dc"]["residual_before"]
    assert not torch.allclose(dc, plain) and torch.all(dc[torch.from_numpy(~mask)] == 0)
    kept = nm(*args, flips=1, dc=1e6)
    torch.testing.assert_close(kept, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))
