"""qsmnet: Quantitative Susceptibility Mapping with deep learning and classical solvers, in PyTorch."""

from pathlib import Path as _Path

__version__ = "0.1.0"

#: The Hydra configs (train.yaml, compare.yaml and their groups), shipped inside the package so a
#: wheel install finds them too.
CONFIG_DIR = _Path(__file__).resolve().parent / "conf"
