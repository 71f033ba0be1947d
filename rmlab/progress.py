"""The Lightning callbacks behind the console's progress bar and train.log's metric lines (the log
filter and handler they write through: rmlab.console; conf/callbacks/default.yaml turns them on)."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from rmlab.console import FILE_ONLY

log = logging.getLogger(__name__)


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar showing the training loss and accuracy (of the last logged step) and the
    latest val/acc, without the logger's version number."""

    SHOWN = {"loss": "train/loss", "acc": "train/acc", "val_acc": "val/acc"}

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, str]:
        metrics = trainer.progress_bar_metrics
        return {label: f"{float(metrics[key]):.3f}" for label, key in self.SHOWN.items() if key in metrics}


class TrainLog(L.Callback):
    """train.log gets `step S/T epoch E: train/loss ... train/acc ...` every `every_n_steps` optimizer
    steps (file only), and `validation at step S: val/acc ...` after every validation (console too)."""

    TRAIN_KEYS = ("train/loss", "train/acc", "train/margin", "train/pairs_per_s")
    VAL_KEYS = ("val/loss", "val/acc", "val/margin", "val/bias/length_balanced_acc", "val/bias/length_spearman",
                "val/probe/mean_acc")

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every_n_steps = every_n_steps
        self._last_logged = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step == self._last_logged or step % self.every_n_steps or not trainer.is_global_zero:
            return  # with gradient accumulation several batches end on one step: log it once
        self._last_logged = step
        total = trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches
        log.info("step %d/%d epoch %d: %s", step, total, trainer.current_epoch,
                 _metrics(trainer.callback_metrics, self.TRAIN_KEYS), extra=FILE_ONLY)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        log.info("validation at step %d (epoch %d): %s", trainer.global_step, trainer.current_epoch,
                 _metrics(trainer.callback_metrics, self.VAL_KEYS))


def _metrics(values: dict, keys: tuple[str, ...]) -> str:
    return "  ".join(f"{key} {float(values[key]):.4g}" for key in keys if key in values)
