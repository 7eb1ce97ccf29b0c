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
        path: the file to watch (``conf/callbacks/default.yaml``: ``${paths.output_dir}/STOP``).
        every_n_steps: how often to look for it.
    """

    def __init__(self, path: str | os.PathLike, every_n_steps: int = 10):
        self.path = Path(path)
        self.every = max(1, int(every_n_steps))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0 and self.path.exists():
            trainer.should_stop = True
