"""The LightningModule that trains any :mod:`qsmnet.models` network on :class:`QSMSample` batches."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import numpy as np
import torch
from torch import nn

from qsmnet.data import QSMSample

#: Display window (ppm) of the slice images logged to TensorBoard.
IMAGE_WINDOW_PPM = 0.15
#: Metrics of :func:`qsmnet.metrics.all_metrics` logged per stage (val/test).
LOGGED_METRICS = ("nrmse", "hfen", "xsim", "ssim", "nrmse_detrend")


def orthogonal_slices(vol: np.ndarray) -> np.ndarray:
    """Central axial, coronal and sagittal slices of ``vol`` (X, Y, Z) side by side, (H, W) array.

    Each slice is shown in its voxel axes (no reorientation); slices are zero-padded to a common height.
    """
    x, y, z = (s // 2 for s in vol.shape)
    views = [vol[:, :, z].T[::-1], vol[:, y, :].T[::-1], vol[x, :, :].T[::-1]]
    h = max(v.shape[0] for v in views)
    views = [np.pad(v, ((0, h - v.shape[0]), (0, 1))) for v in views]
    return np.concatenate(views, axis=1)


def slice_panel(pred: np.ndarray, truth: np.ndarray | None, window: float = IMAGE_WINDOW_PPM) -> np.ndarray:
    """Rows: prediction, truth and error (prediction - truth); grey [-window, window] ppm -> [0, 1].

    Returns:
        (1, H, W) float32 image for ``SummaryWriter.add_image``.
    """
    rows = [pred] if truth is None else [pred, truth, pred - truth]
    img = np.concatenate([orthogonal_slices(r) for r in rows], axis=0)
    return np.clip((img + window) / (2 * window), 0.0, 1.0)[None].astype(np.float32)


class QSMLitModule(L.LightningModule):
    """Supervised QSM training of any network with the ``net(field, mask, geometry)`` call.

    Args:
        net: the network (an ``nn.Module`` from :mod:`qsmnet.models`).
        loss: a callable ``loss(pred, batch) -> (total, {term: value})``, e.g.
            :class:`qsmnet.training.losses.QSMLoss`.
        optimizer: a partial taking the parameters (Hydra ``_partial_: true``).
        scheduler: a partial taking the optimizer, or None.
        scheduler_interval: "step" or "epoch" (when the scheduler steps).
        log_images: log orthogonal slices of prediction, truth and error (first val batch).
        config: the resolved run config (plain dict); stored in every checkpoint so the network can be
            rebuilt from ``config["model"]`` without hand-written architecture code.

    The same :meth:`model_step` serves train, validation and test; logged keys are
    ``{stage}/loss``, ``{stage}/loss_{term}`` and, for val/test, ``{stage}/{metric}`` from
    :func:`qsmnet.metrics.all_metrics` (per sample, averaged; NRMSE and HFEN in %).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Callable,
        optimizer: Callable,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        log_images: bool = True,
        config: dict | None = None,
    ):
        super().__init__()
        # Partials and modules are not plain data: keep them out of the checkpoint so that it loads
        # with torch.load(weights_only=True); `config` carries their resolved description instead.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, field: torch.Tensor, mask: torch.Tensor, geometry) -> torch.Tensor:
        return self.net(field, mask, geometry)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, QSMSample):
            return batch.to(device)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def model_step(self, batch: QSMSample, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss and logging for one batch of any stage; returns (loss, prediction)."""
        pred = self._net(batch)
        total, terms = self.loss(pred, batch)
        bs = len(batch)
        on_step = stage == "train"
        self.log(f"{stage}/loss", total, prog_bar=True, batch_size=bs, on_step=on_step, on_epoch=True)
        for k, v in terms.items():
            self.log(f"{stage}/loss_{k}", v, batch_size=bs, on_step=on_step, on_epoch=True)
        if stage != "train" and batch.chi is not None:
            for k, v in self._metrics(pred, batch).items():
                self.log(f"{stage}/{k}", v, batch_size=bs, prog_bar=k == "nrmse", sync_dist=True)
        return total, pred

    @staticmethod
    def _metrics(pred: torch.Tensor, batch: QSMSample) -> dict[str, float]:
        from qsmnet.metrics import all_metrics

        per = [
            all_metrics(pred[b, 0].float(), batch.chi[b, 0].float(), batch.mask[b, 0])
            for b in range(pred.shape[0])
        ]
        out = {}
        for k in LOGGED_METRICS:
            vals = [p[k] for p in per if math.isfinite(p[k])]
            if vals:
                out[k] = float(np.mean(vals))
        return out

    def training_step(self, batch, batch_idx):
        return self.model_step(batch, "train")[0]

    def validation_step(self, batch, batch_idx):
        loss, pred = self.model_step(batch, "val")
        if batch_idx == 0 and self.hparams.log_images:
            self._log_images(pred, batch, "val")
        return loss

    def test_step(self, batch, batch_idx):
        return self.model_step(batch, "test")[0]

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        return self._net(batch)

    def _net(self, batch: QSMSample) -> torch.Tensor:
        """The network on a batch, with its precomputed initial estimate when the batch has one."""
        if batch.init is not None:
            return self.net(batch.field, batch.mask, batch.geometry, init=batch.init)
        return self.net(batch.field, batch.mask, batch.geometry)

    def _log_images(self, pred: torch.Tensor, batch: QSMSample, stage: str) -> None:
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        writers = [lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_image")]
        if not writers:
            return
        p = pred[0, 0].detach().float().cpu().numpy()
        t = None if batch.chi is None else batch.chi[0, 0].detach().float().cpu().numpy()
        img = slice_panel(p, t)
        for w in writers:
            w.add_image(f"{stage}/slices_pred_truth_error", img, self.global_step)

    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(optimizer=opt)
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": sched, "interval": self.hparams.scheduler_interval, "frequency": 1},
        }
