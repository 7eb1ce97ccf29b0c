"""qsmnet: Quantitative Susceptibility Mapping with deep learning and classical solvers, in PyTorch."""

__version__ = "0.1.0"
