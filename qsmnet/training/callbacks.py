"""Training callbacks beyond Lightning's own."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class StopFile(L.Callback):
    """End training early, cleanly, when a file appears: ``touch <run dir>/STOP``.

    Training then stops after the current step as if it had reached ``max_steps``: the best
    checkpoint is loaded and the weights are exported (``qsmnet-train``'s normal ending), which
    killing the process would skip. Useful on shared or time-limited machines.

    Args:
        path: the file to watch (``qsmnet/conf/callbacks/default.yaml``: ``${paths.output_dir}/STOP``).
        every_n_steps: how often to look for it.
    """

    def __init__(self, path: str | os.PathLike, every_n_steps: int = 10):
        self.path = Path(path)
        self.every = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0 and self.path.exists():
            trainer.should_stop = True


class StepProgressBar(L.pytorch.callbacks.RichProgressBar):
    """Lightning's progress bar, labelled by optimiser steps.

    Training here is step-based (``max_steps``, ``max_epochs: -1`` over an endless stream), for
    which the stock bar prints "Epoch 99/-2"; this one prints "step 1234/2000 (epoch 99)".
    """

    def _label(self) -> str:
        t = self.trainer
        if t.max_steps is None or t.max_steps < 0:
            return f"epoch {t.current_epoch}" + (f"/{t.max_epochs - 1}" if (t.max_epochs or -1) > 0 else "")
        return f"step {t.global_step}/{t.max_steps} (epoch {t.current_epoch})"

    def _get_train_description(self, current_epoch: int) -> str:
        return self._label()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self._label())
