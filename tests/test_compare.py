"""qsmnet.compare, ``qsmnet compare`` and ``qsmnet demo``: tables, figures and numbers that agree."""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest
import torch

from qsmnet.compare import (
    Case,
    PeakMemory,
    load_cases,
    normalise_methods,
    read_csv,
    roi_slope,
    run_comparison,
)
from qsmnet.errors import QSMNetError
from qsmnet.physics import Geometry, forward_field

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _blob_case(name: str, shape, seed: int, b0_dir=(0.0, 0.0, 1.0)) -> Case:
    """Ellipsoidal 'brain' with three labelled nuclei (ids 1-3) on a smooth background; noiseless field."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    mask = (grid**2).sum(0) < 0.8
    chi = 0.02 * np.sin(3 * grid[0] + rng.uniform(0, 3)) * np.cos(2 * grid[1])
    labels = np.zeros(shape, np.int64)
    nuclei = (((-0.35, 0.0, 0.0), 0.05), ((0.35, 0.1, 0.0), 0.15), ((0.0, -0.35, 0.1), 0.10))
    for lab, (c, v) in enumerate(nuclei, start=1):
        blob = (((grid - np.array(c)[:, None, None, None]) / 0.2) ** 2).sum(0) < 1
        chi[blob], labels[blob] = v + 0.01 * rng.standard_normal(), lab
    chi = np.where(mask, chi, 0.0).astype(np.float32)
    labels = np.where(mask, labels, 0)
    geom = Geometry(shape, (1.0, 1.0, 1.2), b0_dir)
    field = forward_field(torch.from_numpy(chi), geom.voxel_size, geom.b0_dir) * torch.from_numpy(mask)
    return Case(name, field.float(), torch.from_numpy(mask), geom, torch.from_numpy(chi),
                torch.from_numpy(labels))


@pytest.fixture
def cases():
    return [_blob_case("caseA", (15, 17, 13), 1), _blob_case("caseB", (17, 15, 19), 2, (0.0, 0.5, 0.866))]


@pytest.fixture
def oracle(cases):
    """A method (a plain callable) returning ``scale`` x the truth, looked up by the field's shape."""
    truths = {tuple(c.chi.shape): c.chi for c in cases}

    def oracle_method(field, mask, geometry, *, info=None, scale=1.0):
        return scale * truths[tuple(field.shape)].to(field.device)

    return oracle_method


def _md_summary(text: str) -> dict[str, list[str]]:
    """{method: cells} of the first Markdown table in ``text``."""
    rows = {}
    for line in text.split("## Per case")[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("method", ""):
            rows[cells[0]] = cells[1:]
    return rows


def test_two_cases_three_methods_consistent_outputs(tmp_path, cases):
    methods = {"tkd": {"method": "tkd"}, "tikhonov": {"method": "tikhonov"},
               "tv": {"method": "tv", "iterations": 20}}
    res = run_comparison(methods, cases, out_dir=tmp_path, device="cpu", progress=False)

    rows = read_csv(tmp_path / "metrics.csv")
    assert [(r["case"], r["method"]) for r in rows] == [(c, m) for c in ("caseA", "caseB") for m in methods]
    for r, mem in zip(rows, res.rows, strict=True):
        for k in ("nrmse", "nrmse_detrend", "hfen", "xsim", "correlation", "dgm_slope", "seconds"):
            assert r[k] == pytest.approx(mem[k], rel=1e-12), k
        assert r["device"] == "cpu" and r["peak_mem_mib"] >= 0 and r["seconds"] > 0
        assert math.isfinite(r["dgm_slope"])
    assert all(r["iterations"] <= 20 for r in rows if r["method"] == "tv")

    # The metrics in the table are those of the method run on its own.
    from qsmnet.inference import get_method
    from qsmnet.metrics import nrmse

    c = cases[1]
    chi = get_method("tikhonov")(c.field, c.mask, c.geometry)
    row = next(r for r in rows if r["case"] == "caseB" and r["method"] == "tikhonov")
    assert row["nrmse"] == pytest.approx(nrmse(chi, c.chi, c.mask), rel=1e-5)

    # summary.csv and the Markdown table are the means (and std) of the per-case rows.
    summary = {s["method"]: s for s in read_csv(tmp_path / "summary.csv")}
    md = _md_summary((tmp_path / "results.md").read_text())
    assert list(md) == list(methods)
    for m in methods:
        v = np.array([r["nrmse"] for r in rows if r["method"] == m])
        assert summary[m]["nrmse"] == pytest.approx(v.mean(), rel=1e-12)
        assert summary[m]["n_cases"] == 2
        assert md[m][0] == f"{v.mean():.1f} ± {v.std():.1f}"
        slope = np.array([r["dgm_slope"] for r in rows if r["method"] == m]).mean()
        assert md[m][5].split(" ± ")[0] == f"{slope:.2f}"
    assert "## Per case" in (tmp_path / "results.md").read_text()

    # ROI means: one per (case, truth or method, label 1-3).
    roi = read_csv(tmp_path / "roi.csv")
    assert len(roi) == 2 * (1 + 3) * 3
    assert {r["roi"] for r in roi} == {"caudate", "globus_pallidus", "putamen"}

    # Figures: the first case's slices and the metric chart, real PNGs.
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["metrics.png", "slices_caseA.png"]
    import matplotlib.image as mpimg

    for n in names:
        assert (tmp_path / n).read_bytes()[:8] == PNG_MAGIC
        img = mpimg.imread(tmp_path / n)
        assert img.shape[0] > 100 and img.shape[1] > 100 and img[..., :3].std() > 0.05


def test_oracle_scores_and_roi_slope(tmp_path, cases, oracle):
    methods = {"oracle": {"method": oracle}, "half": {"method": oracle, "scale": 0.5}}
    res = run_comparison(methods, cases, device="cpu", progress=False, figures=False)
    assert res.files == {}
    for r in res.rows:
        if r["method"] == "oracle":
            assert r["nrmse"] == pytest.approx(0.0, abs=1e-4)
            assert r["correlation"] == pytest.approx(1.0, abs=1e-6)
            assert r["dgm_slope"] == pytest.approx(1.0, abs=1e-5)
        else:  # a global scale: nRMSE 50 %, removed by detrending, slope 0.5
            assert r["nrmse"] == pytest.approx(50.0, abs=1e-3)
            assert r["nrmse_detrend"] == pytest.approx(0.0, abs=1e-3)
            assert r["dgm_slope"] == pytest.approx(0.5, abs=1e-5)
    assert [s["method"] for s in res.summary] == ["oracle", "half"]
    assert {r["registered"] for r in res.rows} == {"oracle_method"}
    with pytest.raises(QSMNetError, match="does not take parameter"):
        run_comparison({"o": {"method": oracle, "lam": 1}}, cases, progress=False)


def test_case_without_truth_has_time_but_no_metrics(cases):
    c = cases[0]
    c = Case("notruth", c.field, c.mask, c.geometry)
    res = run_comparison(["tkd"], [c], device="cpu", progress=False)
    (row,) = res.rows
    assert math.isnan(row["nrmse"]) and math.isnan(row["dgm_slope"]) and row["seconds"] > 0
    assert res.maps["notruth"]["truth"] is None


def test_roi_slope():
    truth = {1: 0.05, 2: 0.15, 3: 0.10}
    assert roi_slope({k: 2 * v + 0.01 for k, v in truth.items()}, truth) == pytest.approx(2.0)
    assert math.isnan(roi_slope({1: 0.1}, {1: 0.05}))
    assert math.isnan(roi_slope({1: 0.1, 2: 0.2}, {1: 0.05, 2: 0.05}))


def test_normalise_methods_forms():
    from qsmnet.inference import DEFAULT_METHOD

    got = normalise_methods(["tkd", {"name": "tv_strong", "method": "tv", "lam": 1e-3}],
                            params={"tkd": {"threshold": 0.1}})
    assert got == {"tkd": {"method": "tkd", "threshold": 0.1}, "tv_strong": {"method": "tv", "lam": 1e-3}}
    assert normalise_methods({"a": {"method": "tkd"}, "tv": {}}) == {"a": {"method": "tkd"},
                                                                    "tv": {"method": "tv"}}
    assert normalise_methods("tkd, tv") == {"tkd": {"method": "tkd"}, "tv": {"method": "tv"}}
    d = normalise_methods(["default"])
    if DEFAULT_METHOD == "tv":
        assert d == {"tv": {"method": "tv"}}
        # `default` listed next to the same solver is compared once.
        assert list(normalise_methods(["default", "tv"])) == ["tv"]
    else:  # a default network runs under its guard, beside the bare network when that is listed too
        assert d == {f"{DEFAULT_METHOD}+guard": {"method": "default"}}
        both = [f"{DEFAULT_METHOD}+guard", DEFAULT_METHOD]
        assert list(normalise_methods(["default", DEFAULT_METHOD])) == both
    for bad, msg in (([], "no methods"), (["tkd", "tkd"], "twice"), ([{"lam": 1}], "needs a 'method'")):
        with pytest.raises(QSMNetError, match=msg):
            normalise_methods(bad)
    with pytest.raises(QSMNetError, match="not among"):
        normalise_methods(["tkd"], params={"tv": {"lam": 1}})


def test_bad_method_parameter_and_out_dir(tmp_path, cases):
    with pytest.raises(QSMNetError, match="does not take parameter"):
        run_comparison({"tkd": {"method": "tkd", "lam": 1.0}}, cases, progress=False)
    with pytest.raises(QSMNetError, match="unknown method"):
        run_comparison(["no_such_method"], cases, progress=False)
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(QSMNetError, match="not empty"):
        run_comparison(["tkd"], cases, out_dir=tmp_path, device="cpu", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_peak_memory_sees_a_held_allocation():
    with PeakMemory("cpu") as pm:
        x = torch.ones(16 * 2**20)  # 64 MiB, touched
        time.sleep(0.05)
        del x
    assert 56 * 2**20 <= pm.peak_bytes < 1024 * 2**20
    assert pm.source in ("rss_sampled", "ru_maxrss")


def test_cli_compare_on_a_folder(tmp_path, cases, capsys):
    from qsmnet.cli.main import main
    from qsmnet.compare.cases import write_case_nifti

    for c in cases:
        write_case_nifti(c, tmp_path / "data" / c.name)
    out = tmp_path / "out"
    argv = ["compare", f"cases={tmp_path / 'data'}", "methods=[tkd,{name:tik,method:tikhonov,lam:0.05}]",
            f"out_dir={out}", "device=cpu", "progress=false", "figure_cases=all"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^\| tkd \| [0-9.]+ ± [0-9.]+ \|", printed, re.M) and "| tik |" in printed
    rows = read_csv(out / "metrics.csv")
    assert {(r["case"], r["method"]) for r in rows} == {(c.name, m) for c in cases for m in ("tkd", "tik")}
    assert all(r["params"] == '{"lam": 0.05}' for r in rows if r["method"] == "tik")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["metrics.png", "slices_caseA.png", "slices_caseB.png"]
    assert "lam: 0.05" in (out / "config.yaml").read_text()
    # The NIfTI round trip (affine -> geometry) gives the same numbers as the in-memory cases.
    direct = run_comparison(["tkd"], cases, device="cpu", progress=False)
    for d in direct.rows:
        r = next(r for r in rows if r["case"] == d["case"] and r["method"] == "tkd")
        assert r["nrmse"] == pytest.approx(d["nrmse"], rel=1e-4)

    # Existing output: refused without force, one line on stderr, exit 2.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "force=true", "figures=false"]) == 0
    capsys.readouterr()
    assert main(["compare", "methods=[nope]", f"out_dir={tmp_path / 'o2'}"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["compare", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_cli_compare_cfg_prints_overrides(capsys):
    from qsmnet.cli.main import main

    assert main(["compare", "--cfg", "methods=[tkd,tv]", "+params.tv.lam=0.001"]) == 0
    out = capsys.readouterr().out
    assert "- tkd\n- tv\n" in out and "lam: 0.001" in out and "cases: benchmark" in out


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path, capsys):
    from qsmnet.cli.main import main

    out = tmp_path / "demo"
    argv = ["demo", "--size", "24", "--voxel", "3", "--out", str(out), "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = read_csv(out / "metrics.csv")
    methods = [r["method"] for r in rows]
    assert {"tkd", "tikhonov", "tv"} <= set(methods) and len(methods) == len(set(methods))
    for m in methods:
        assert f"| {m} |" in printed
    assert all(math.isfinite(r["nrmse"]) and r["nrmse"] < 100 for r in rows)
    assert (out / "demo.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "metrics.png").exists() and (out / "results.md").exists()
    assert (out / "input" / "brain24" / "field.nii.gz").exists()
    assert main(["demo", "--size", "24", "--out", str(out), "--quiet"]) == 2  # not empty, no --force


def test_slice_figure_windows_labels_and_colour_bars(cases):
    from qsmnet.compare.figures import CHI_WINDOW_PPM, slice_figure

    res = run_comparison(["tkd", "tikhonov"], cases[:1], device="cpu", progress=False)
    fig = slice_figure(res.maps["caseA"], title="caseA")
    axes = [ax for ax in fig.axes if ax.images]
    chi_axes = [ax for ax in axes if ax.images[0].get_cmap().name.startswith("gray")]
    assert len(chi_axes) == 3 * 3 and CHI_WINDOW_PPM == 0.15  # truth + 2 methods, 3 planes
    assert all(ax.images[0].get_clim() == (-0.15, 0.15) for ax in chi_axes)  # not a ±0.05 clip
    labels = [ax.get_ylabel() for ax in axes]
    assert "tkd − truth" in labels and "tikhonov − truth" in labels and "field" in labels
    bars = [ax.get_ylabel() for ax in fig.axes if not ax.images and ax.get_ylabel()]
    assert any(b.startswith("χ (ppm)") for b in bars) and any("error" in b for b in bars)
    assert any("field" in b for b in bars)


def test_a_flat_folder_is_one_case_named_after_it(tmp_path, cases, capsys):
    from qsmnet.cli.main import main
    from qsmnet.compare.cases import write_case_nifti

    write_case_nifti(cases[0], tmp_path / "subj07")  # field.nii.gz, mask.nii.gz, ... directly inside
    loaded = load_cases(tmp_path / "subj07")
    assert [c.name for c in loaded] == ["subj07"]
    out = tmp_path / "out"
    assert main(["compare", f"cases={tmp_path / 'subj07'}", "methods=[tkd]", f"out_dir={out}", "device=cpu",
                 "progress=false", "figures=false"]) == 0  # fmt: skip
    assert {r["case"] for r in read_csv(out / "metrics.csv")} == {"subj07"}
    assert "| ." not in capsys.readouterr().out


def test_compare_output_folder_is_git_ignored():
    from pathlib import Path

    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().split()
    assert "compare-out/" in ignored and "qsmnet-demo/" in ignored


def test_one_description_of_the_demo():
    from pathlib import Path

    from qsmnet.cli.demo import DESCRIPTION

    root = Path(__file__).resolve().parents[1]
    doc = " ".join((root / "docs" / "compare.md").read_text().split())
    assert DESCRIPTION in doc
    assert "default network, TKD, Tikhonov and TV" not in doc  # the old, shorter account


def test_packaging_extras():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert any(d.startswith("jupyterlab") for d in extras["notebooks"])
    every = [d for ds in [meta["dependencies"], *extras.values()] for d in ds]
    assert not any(d.startswith(("hypothesis", "nbmake")) for d in every)  # nothing imports them
