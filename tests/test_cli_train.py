"""``qsmnet-train`` as a user runs it: one run folder, each log line once, a step-labelled progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_one_run_folder_no_duplicate_lines_step_progress(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    argv = [sys.executable, "-m", "qsmnet.cli.train", "model=lpcnn", "data=tiny", "trainer.max_steps=3",
            "trainer.val_check_interval=2", "model.iterations=1", "model.features=4",
            "model.depth=2"]  # fmt: skip
    p = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout + p.stderr
    assert "/-2" not in out and "step 3/3" in out
    runs = list((tmp_path / "outputs" / "train").iterdir())
    assert [x.name for x in tmp_path.iterdir()] == ["outputs"] and len(runs) == 1  # nothing else in the cwd
    run = runs[0]
    assert list((run / "checkpoints").glob("*.ckpt")) and list((run / "tensorboard").glob("events.*"))
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "weights" / "lpcnn.safetensors").is_file()
    lines = [ln for ln in out.splitlines() if "max_steps=3` reached" in ln]
    assert len(lines) == 1, lines  # was printed twice (Lightning's handler and Hydra's)
    log = (run / "train.log").read_text()
    assert log.count("max_steps=3` reached") == 1 and "exported weights" in log


def test_configs_ship_inside_the_package():
    """A wheel (not editable) install must find the Hydra configs: they live in qsmnet/conf."""
    import qsmnet
    from qsmnet.cli import compare, train

    assert qsmnet.CONFIG_DIR == Path(qsmnet.__file__).resolve().parent / "conf"
    assert (qsmnet.CONFIG_DIR / "train.yaml").is_file() and (qsmnet.CONFIG_DIR / "compare.yaml").is_file()
    assert Path(train.CONFIG_DIR) == qsmnet.CONFIG_DIR and compare.CONFIG_DIR == qsmnet.CONFIG_DIR
    assert not (ROOT / "conf").exists()
    text = (ROOT / "pyproject.toml").read_text()
    assert '"conf/*.yaml", "conf/*/*.yaml"' in text
    depth = {len(p.relative_to(qsmnet.CONFIG_DIR).parts) for p in qsmnet.CONFIG_DIR.rglob("*.yaml")}
    assert depth <= {1, 2}  # the package-data globs reach every config
