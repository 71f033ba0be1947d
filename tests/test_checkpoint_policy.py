"""What a finished run keeps (rmlab.checkpoint.KeepAfterFit): the best checkpoint without optimizer
state, no last.ckpt, unless asked to keep it or unless it holds the only weights. On real
ModelCheckpoint callbacks of a real Trainer, with checkpoint files on disk."""

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from rmlab.checkpoint import KeepAfterFit


def _trainer(tmp_path: Path, best_exists: bool = True) -> tuple[L.Trainer, Path, Path]:
    """A Trainer with rmlab's two checkpoint callbacks, as if fit had written best-*.ckpt and last.ckpt."""
    weights = {"head.weight": torch.ones(4, 8)}
    full = {"state_dict": weights, "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(4, 8)}}}],
            "lr_schedulers": [{"last_epoch": 3}], "global_step": 3, "rmlab_config": {"seed": 0}}
    best, last = tmp_path / "best-epoch0-step3.ckpt", tmp_path / "last.ckpt"
    monitored = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    latest = ModelCheckpoint(dirpath=tmp_path, filename="last", every_n_train_steps=1)
    if best_exists:
        torch.save(full, best)
        monitored.best_k_models = {str(best): torch.tensor(0.75)}
    torch.save(full, last)
    latest.best_model_path = str(last)
    return L.Trainer(callbacks=[monitored, latest], logger=False, enable_progress_bar=False), best, last


def test_a_finished_run_keeps_the_best_weights_without_optimizer_state_and_no_last_ckpt(tmp_path):
    trainer, best, last = _trainer(tmp_path)
    full_size = best.stat().st_size
    KeepAfterFit().on_fit_end(trainer, None)
    assert not last.exists()
    kept = torch.load(best, weights_only=True)
    assert sorted(kept) == ["global_step", "rmlab_config", "state_dict"]
    assert torch.equal(kept["state_dict"]["head.weight"], torch.ones(4, 8))
    assert best.stat().st_size < full_size


def test_keep_last_keeps_it_and_slim_best_false_keeps_the_optimizer_state(tmp_path):
    trainer, best, last = _trainer(tmp_path)
    KeepAfterFit(keep_last=True, slim_best=False).on_fit_end(trainer, None)
    assert "optimizer_states" in torch.load(best, weights_only=True)
    assert "optimizer_states" in torch.load(last, weights_only=True)


def test_without_a_best_checkpoint_last_ckpt_stays_as_the_only_weights(tmp_path, caplog):
    trainer, best, last = _trainer(tmp_path, best_exists=False)
    KeepAfterFit().on_fit_end(trainer, None)
    assert last.exists() and "optimizer_states" in torch.load(last, weights_only=True)
    assert f"training finished without a best checkpoint (no validation ran?): keeping {last}" in caplog.text
