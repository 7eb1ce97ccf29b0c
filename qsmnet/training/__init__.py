"""Training: LightningModule, losses and ``train(cfg)``. Imports models, data and metrics.

Lightning is imported lazily (``train`` and ``QSMLitModule`` on first use), so importing the losses
stays cheap.
"""

from __future__ import annotations

from .losses import QSMLoss, gradient_difference_loss, l1_loss, l2_loss, model_loss

__all__ = [
    "QSMLitModule",
    "QSMLoss",
    "StopFile",
    "export_checkpoint",
    "gradient_difference_loss",
    "l1_loss",
    "l2_loss",
    "model_loss",
    "train",
]


def __getattr__(name):
    if name == "QSMLitModule":
        from .module import QSMLitModule

        return QSMLitModule
    if name in ("train", "export_checkpoint"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "StopFile":
        from .callbacks import StopFile

        return StopFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
