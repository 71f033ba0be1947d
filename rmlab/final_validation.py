"""A fit never ends without a validation: the run's best checkpoint, val/acc and report need one."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)


class ValidateFinalWeights(L.Callback):
    """When trainer.max_steps ends training before any validation has run (e.g. `trainer.max_steps=3`
    with 6 batches per epoch), ask Lightning to stop at that batch: a stop request makes it validate
    there, so ModelCheckpoint writes a best checkpoint and val/acc exists.

    Lightning still skips validation in an epoch that `check_val_every_n_epoch` excludes; rmlab.train
    then reports val/acc as null and says which settings to check.
    """

    def __init__(self) -> None:
        self.validated = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validated = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.validated or not trainer.enable_validation or not 0 < trainer.max_steps <= trainer.global_step:
            return
        # Lightning validates at an epoch's end and every val_check_batch batches by itself.
        every = trainer.val_check_batch
        if batch_idx + 1 >= trainer.num_training_batches or (isinstance(every, int) and (batch_idx + 1) % every == 0):
            return
        log.info("training stops at step %d (trainer.max_steps) before any validation: validating the final weights",
                 trainer.global_step)
        trainer.should_stop = True
