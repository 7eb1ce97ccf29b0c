"""The one method contract, for every registered method (solvers and shipped networks).

Each runs on one small seeded case through :func:`qsmnet.inference.load_method` and through
``predict_file``: chi has the field's shape, float32, zero outside the mask; the effective
parameters cover every parameter with its default; the sidecar is complete; two CPU runs agree
bit for bit.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import qsm_forward
import torch

from qsmnet.inference.contract import Adapter, Method, Result
from qsmnet.inference.methods import load_method, method_names, method_table
from qsmnet.physics import Geometry

N = (17, 15, 13)
SIDECAR_KEYS = ("qsmnet_version", "created_utc", "method", "kind", "parameters", "iterations", "residual",
                "device", "inputs", "units_in", "MagneticFieldStrength", "EchoTime", "voxel_size", "b0_dir",
                "seconds", "warnings")  # fmt: skip


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(3)
    x = np.stack(np.meshgrid(*[np.arange(n) - n // 2 for n in N], indexing="ij")).astype(float)
    mask = ((x / (0.42 * np.array(N)[:, None, None, None])) ** 2).sum(0) < 1
    chi = sum(0.1 * np.exp(-((x - c) ** 2).sum(0) / 5.0) for c in rng.uniform(-3, 3, (4, 3, 1, 1, 1)))
    chi = (chi * mask).astype(np.float32)
    field = (qsm_forward.generate_field(chi, mask, voxel_size=[1.0, 1.0, 1.2]) * mask).astype(np.float32)
    field += (0.001 * rng.standard_normal(N) * mask).astype(np.float32)
    return field, mask, Geometry(N, (1.0, 1.0, 1.2), (0.0, 0.0, 1.0))


@pytest.mark.parametrize("name", method_names())
def test_every_method_keeps_the_contract(name, small, tmp_path):
    field, mask, geom = small
    torch.manual_seed(0)
    m = load_method(name)
    assert isinstance(m, Method) and m.kind in ("solver", "network") and m.description
    assert m.name == name
    res = m(field, mask, geom)
    assert isinstance(res, Result)
    chi = res.chi
    assert chi.shape == N and chi.dtype == torch.float32 and torch.isfinite(chi).all()
    assert torch.all(chi[torch.from_numpy(~mask)] == 0) and chi.abs().max() > 0
    assert set(res.params) == set(m.parameters())  # every parameter, defaults filled in
    assert "auto" not in (res.params.get("lam"),)  # λ is the value chosen
    assert 0 <= res.residual < 1
    again = m(torch.from_numpy(field), torch.from_numpy(mask.astype(np.uint8) * 3), geom)  # any mask values
    torch.testing.assert_close(again.chi, chi, rtol=0, atol=0)  # deterministic on the CPU

    from qsmnet.inference import predict_file

    aff = np.diag([1.0, 1.0, 1.2, 1.0])
    nib.save(nib.Nifti1Image(field, aff), tmp_path / "f.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), tmp_path / "m.nii.gz")
    side = predict_file(tmp_path / "f.nii.gz", tmp_path / "m.nii.gz", tmp_path / "chi.nii.gz", method=name,
                        device="cpu", warn=None)  # fmt: skip
    on_disk = json.loads((tmp_path / "chi.json").read_text())
    missing = [k for k in SIDECAR_KEYS if k not in on_disk]
    assert not missing, missing
    assert side["method"] == name and on_disk["parameters"].keys() == m.parameters().keys()
    # the header stores the affine in float32 (voxel 1.2 mm -> 1.2000000477), hence not bit-equal
    np.testing.assert_allclose(nib.load(tmp_path / "chi.nii.gz").get_fdata(), chi.numpy(), rtol=0, atol=1e-5)
    if m.kind == "network":
        assert on_disk["model"]["weights_sha256"].startswith("sha256:")


def test_contract_refuses_what_the_old_calls_disagreed_on(small):
    field, mask, geom = small
    m = load_method("tkd")
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        m(torch.from_numpy(field)[None, None], mask, geom)  # 5D: the solvers took it, networks too
    with pytest.raises(ValueError, match="geometry shape"):
        m(field, mask, geom.with_(shape=(9, 9, 9)))  # networks used to reshape silently
    with pytest.raises(ValueError, match="mask shape"):
        m(field, mask[:-1], geom)
    from qsmnet.errors import QSMNetError

    with pytest.raises(QSMNetError, match="does not take parameter"):
        m(field, mask, geom, lam=1.0)
    res = m(field.astype(np.float64), mask, geom)  # any float dtype in, float32 out
    assert res.chi.dtype == torch.float32


def test_a_plain_function_gets_the_contract_too(small):
    field, mask, geom = small

    def half_of_tkd(field, mask, geometry, *, info=None, scale: float = 0.5):
        from qsmnet.solvers import get_solver

        return scale * get_solver("tkd")(field, mask, geometry)

    m = load_method(half_of_tkd)
    assert isinstance(m, Adapter) and m.kind == "function" and m.parameters() == {"scale": 0.5}
    torch.testing.assert_close(m(field, mask, geom).chi, 0.5 * load_method("tkd")(field, mask, geom).chi)


def test_table_and_registry_agree():
    rows = method_table()
    solvers = [r["name"] for r in rows if r["kind"] == "solver"]
    assert solvers == sorted(solvers) and {r["name"] for r in rows} == set(method_names())
