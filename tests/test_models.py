"""Networks: shapes, per-sample geometry, physics at initialisation, weights round trip, losses."""

from __future__ import annotations

import json

import pytest
import torch

from qsmnet.models import LPCNN, MoDL, QSMUNet, VarNet
from qsmnet.models import io as mio
from qsmnet.physics import DipoleOperator, Geometry
from qsmnet.training.losses import QSMLoss, gradient_difference_loss, l1_loss, l2_loss, model_loss

SHAPE = (15, 17, 13)
OBLIQUE = Geometry(SHAPE, (0.8, 1.0, 1.6), (0.35, -0.2, 0.9))
AXIAL = Geometry(SHAPE)


def tiny(cls):
    if cls is QSMUNet:
        return QSMUNet(channels=(4, 8, 16), strides=(2, 2), num_res_units=0)
    if cls is MoDL:
        return MoDL(iterations=2, cg_iters=3, features=4, depth=2)
    return cls(iterations=2, features=4, depth=2)


def blobs(seed=0, shape=SHAPE, n=6):
    """A smooth random chi (ppm) in a spherical mask, (1, 1, X, Y, Z)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
    chi = torch.zeros(shape)
    for _ in range(n):
        c = torch.rand(3, generator=g) * torch.tensor(shape) * 0.6 + torch.tensor(shape) * 0.2
        r = 1.5 + 2.5 * torch.rand(1, generator=g)
        amp = 0.2 * (torch.rand(1, generator=g) - 0.5)
        d2 = ((grid - c[:, None, None, None]) ** 2).sum(0)
        chi += amp * torch.exp(-d2 / (2 * r**2))
    centre = torch.tensor(shape, dtype=torch.float32)[:, None, None, None] / 2 - 0.5
    mask = (((grid - centre) / (torch.tensor(shape)[:, None, None, None] * 0.45)) ** 2).sum(0) < 1
    return (chi * mask)[None, None], mask.float()[None, None]


def perturbed(net, seed=0):
    """Break the zero initialisation of the residual heads so the CNN parts matter."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("cls", [QSMUNet, LPCNN, VarNet, MoDL])
def test_shape_mask_and_per_sample_geometry(cls):
    net = perturbed(tiny(cls)).eval()
    chi1, mask = blobs(1)
    chi2, _ = blobs(2)
    f1 = DipoleOperator(AXIAL).A(chi1)
    f2 = DipoleOperator(OBLIQUE).A(chi2)
    with torch.no_grad():
        both = net(torch.cat([f1, f2]), torch.cat([mask, mask]), (AXIAL, OBLIQUE))
        one = net(f1, mask, (AXIAL,))
        two = net(f2, mask, (OBLIQUE,))
        wrong = net(f2, mask, (AXIAL,))
    assert both.shape == (2, 1, *SHAPE)
    assert torch.isfinite(both).all()
    assert (both[:, :, mask[0, 0] == 0] == 0).all()
    # Sample b is reconstructed with geometry b, whatever else is in the batch.
    torch.testing.assert_close(both[:1], one, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(both[1:], two, atol=1e-6, rtol=1e-4)
    # ... and the geometry matters.
    assert (two - wrong).abs().max() > 1e-3 * two.abs().max()


ANISO = Geometry(SHAPE, (1.0, 1.0, 2.5), (0, 0, 1))


@pytest.mark.parametrize("cls", [LPCNN, VarNet, MoDL])
@pytest.mark.parametrize("geom", [OBLIQUE, ANISO], ids=["oblique", "aniso"])
def test_unrolled_at_init_fit_the_data_of_their_geometry(cls, geom):
    """Untrained, the CNN priors are the identity, so the nets run plain data-consistency iterations:
    with the true (oblique / anisotropic) geometry they must reduce the data residual below the
    Tikhonov start and land closer to the truth than with an axial, isotropic geometry."""
    kw = {"cg_iters": 8} if cls is MoDL else {"step_init": 3.0}
    net = cls(iterations=3, features=4, depth=2, tik_lambda=0.05, **kw)
    chi, mask = blobs(3)
    op = DipoleOperator(geom)
    f = op.A(chi)
    with torch.no_grad():
        x = net(f, mask, (geom,))
        x_wrong = net(f, mask, (Geometry(SHAPE),))
        x0 = net.start(f, mask, (geom,))[2]

    def resid(v):
        return (mask * (op.A(v) - f)).norm()

    def err(v):
        return (mask * (v - chi)).norm()

    assert resid(x) < 0.75 * resid(x0)
    assert err(x) < 0.8 * err(x0)
    assert err(x) < 0.92 * err(x_wrong)


def test_unet_pads_any_size_and_crops_back():
    net = perturbed(tiny(QSMUNet))
    for shape in [(9, 11, 7), (16, 16, 16), (5, 6, 7)]:
        f = 0.05 * torch.randn(1, 1, *shape)
        out = net(f, torch.ones_like(f), (Geometry(shape),))
        assert out.shape == f.shape
        out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_refine_head_grows_from_a_plain_unet(tmp_path):
    """A full-resolution head added to trained weights starts as the identity, then acts voxel by voxel."""
    kw = {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 0}
    old = perturbed(QSMUNet(**kw)).eval()
    net = QSMUNet(refine_channels=4, **kw).eval()
    grown = mio.load_grown(net, old.state_dict())
    assert grown and all(k.startswith("refine.") for k in grown)
    chi, mask = blobs(3)
    f = DipoleOperator(OBLIQUE).A(chi)
    with torch.no_grad():
        before = old(f, mask, (OBLIQUE,))
        torch.testing.assert_close(net(f, mask, (OBLIQUE,)), before, rtol=0, atol=0)
        perturbed(net.refine, seed=1)
        after = net(f, mask, (OBLIQUE,))
    assert not torch.allclose(after, before)
    # the head's receptive field is 5 voxels: a change of the input at one voxel moves the head's
    # share of the output only within 2 voxels of it
    with torch.no_grad():
        x0 = torch.cat([f, torch.zeros_like(f), mask, torch.zeros_like(f)], 1)
        x1 = x0.clone()
        x1[0, 0, 7, 8, 6] += 1.0
        d = (net.refine(x1) - net.refine(x0))[0, 0].abs()
    far = torch.ones_like(d, dtype=torch.bool)
    far[5:10, 6:11, 4:9] = False
    assert d[~far].max() > 0 and d[far].max() == 0
    # the grown network saves and loads like any other
    cfg = {"_target_": "qsmnet.models.QSMUNet", "refine_channels": 4, **kw}
    mio.save_weights(net, cfg, tmp_path / "r")
    net2, _ = mio.load_network(tmp_path / "r")
    with torch.no_grad():
        torch.testing.assert_close(net2(f, mask, (OBLIQUE,)), after, rtol=0, atol=0)
    # without the branch prefix a missing parameter is still an error
    with pytest.raises(RuntimeError, match="Missing"):
        mio.load_grown(QSMUNet(channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=0), old.state_dict())
    with pytest.raises(ValueError, match="refine_channels"):
        QSMUNet(refine_channels=-1, **kw)


def test_geometry_shape_taken_from_tensor():
    """A patch carries its parent volume's geometry; the net uses only voxel size and B0 direction."""
    net = tiny(LPCNN)
    chi, mask = blobs(4)
    f = DipoleOperator(OBLIQUE).A(chi)
    parent = OBLIQUE.with_(shape=(64, 64, 64))
    torch.testing.assert_close(net(f, mask, (parent,)), net(f, mask, (OBLIQUE,)))
    with pytest.raises(ValueError, match="geometries"):
        net(torch.cat([f, f]), torch.cat([mask, mask]), (AXIAL, AXIAL, AXIAL))


@pytest.mark.parametrize("cls", [QSMUNet, LPCNN, MoDL])
def test_save_load_rebuilds_identical_network(cls, tmp_path, monkeypatch):
    from hydra.utils import instantiate  # noqa: F401  (the loader's dependency)

    cfg = {"_target_": f"qsmnet.models.{cls.__name__}"}
    net = perturbed(instantiate(cfg)).eval()
    chi, mask = blobs(5)
    f = DipoleOperator(OBLIQUE).A(chi)
    st = mio.save_weights(net, cfg, tmp_path / "w" / "mynet", extra={"steps": 3})
    assert st.suffix == ".safetensors"
    meta = json.loads((tmp_path / "w" / "mynet.json").read_text())
    assert meta["model"] == cfg and meta["steps"] == 3
    net2, meta2 = mio.load_network(tmp_path / "w" / "mynet")
    assert type(net2) is cls and not net2.training and meta2 == meta
    with torch.no_grad():
        torch.testing.assert_close(net2(f, mask, (OBLIQUE,)), net(f, mask, (OBLIQUE,)), rtol=0, atol=0)
    # A bare name is looked up among the shipped weights.
    monkeypatch.setattr(mio, "WEIGHTS_DIR", tmp_path / "w")
    assert mio.available() == ["mynet"]
    assert isinstance(mio.load_network("mynet")[0], cls)
    with pytest.raises(FileNotFoundError, match="shipped: mynet"):
        mio.load_network("nonexistent")


def test_loader_refuses_foreign_targets(tmp_path):
    net = tiny(LPCNN)
    mio.save_weights(net, {"_target_": "os.system", "command": "true"}, tmp_path / "evil")
    with pytest.raises(ValueError, match="qsmnet.models"):
        mio.load_network(tmp_path / "evil.safetensors")


def test_losses_values():
    chi, mask = blobs(6)
    geom = (OBLIQUE,)
    f = DipoleOperator(OBLIQUE).A(chi)
    pred = chi + 0.01 * mask
    assert l1_loss(pred, chi, mask).item() == pytest.approx(0.01, rel=1e-4)
    assert l2_loss(pred, chi, mask).item() == pytest.approx(1e-4, rel=1e-3)
    # A constant offset inside the mask has no gradient except across the mask edge, which is excluded.
    assert gradient_difference_loss(pred, chi, mask, geom).item() < 1e-7
    bumped = chi.clone()
    bumped[0, 0, 7, 8, 6] += 0.1
    gd = gradient_difference_loss(bumped, chi, mask, geom).item()
    n_inside = 3 * mask.sum().item()  # upper bound of the valid differences
    assert gd > 0.1 * 2 / n_inside  # two differences per axis touch the voxel
    assert model_loss(chi, f, mask, geom).item() < 1e-6
    assert model_loss(pred, f, mask, geom).item() > 1e-4

    class Batch:
        pass

    b = Batch()
    b.field, b.mask, b.chi, b.geometry = f, mask, chi, geom
    total, terms = QSMLoss(l1=1.0, gradient=0.5, model=2.0)(pred, b)
    assert set(terms) == {"l1", "gradient", "model"}
    expected = terms["l1"].item() + 0.5 * terms["gradient"].item() + 2 * terms["model"].item()
    assert total.item() == pytest.approx(expected)
    b.chi = None
    with pytest.raises(ValueError, match="chi"):
        QSMLoss()(pred, b)
    assert QSMLoss(l1=0, model=1)(pred, b)[0] > 0
