"""resume=auto / ckpt_path: a run stopped mid-epoch and resumed ends where an uninterrupted run ends."""

import json
import re

import lightning as L
import pytest
import torch

from rmlab.errors import ConfigError
from rmlab.launch import resume_checkpoint, resumed_logger_settings
from rmlab.train import train

from conftest import compose_train

# 32 train pairs, batch 8: 4 steps per epoch, 8 in all. last.ckpt every 3 steps: step 3 is
# mid-epoch 0 (one batch of it left), step 6 mid-epoch 1; the crash comes at step 5.
COMMON = ["experiment=smoke", "data.source.n_train=32", "data.source.n_val=16", "data.source.n_test=16",
          "data.batch_size=8", "trainer.max_epochs=2", "trainer.precision=32-true", "model.optimizer.lr=1e-3",
          "callbacks.last_checkpoint.every_n_train_steps=3", "diagnostics.enabled=false"]


class CrashAtStep(L.Callback):
    """Stands in for a killed job: fails before training step `step` (Lightning saves nothing on the way out)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash at step {self.step}")


@pytest.mark.e2e
@pytest.mark.slow
def test_resume_auto_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    whole = train(compose_train(COMMON, tmp_path / "whole"))

    run_dir = tmp_path / "crashed"
    crashing = COMMON + ["+callbacks.crash._target_=test_resume.CrashAtStep", "+callbacks.crash.step=5"]
    with pytest.raises(RuntimeError, match="crash at step 5"):
        train(compose_train(crashing, run_dir))
    assert not (run_dir / "summary.json").exists()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    resumed = train(compose_train(COMMON + ["resume=auto"], run_dir))  # same command, same run dir
    assert resumed["train/steps"] == whole["train/steps"] == 8
    assert resumed["train/pairs_seen"] == whole["train/pairs_seen"] == 64  # counted across the restart
    # Same batches in the same order from step 3 on, same optimizer and scheduler state.
    for key in ("val/acc", "test/acc", "test/loss", "test/margin", "test/reward_chosen_std"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-4), key
    assert json.loads((run_dir / "summary.json").read_text())["train/steps"] == 8
    # The first attempt's metrics are kept next to the resumed ones.
    assert (run_dir / "csv" / "metrics.csv").is_file() and list((run_dir / "csv").glob("resumed-*/metrics.csv"))


def test_resume_auto_without_a_checkpoint_starts_fresh_and_a_missing_ckpt_path_is_refused(tmp_path):
    cfg = compose_train(["resume=auto"], tmp_path)
    assert resume_checkpoint(cfg, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"global_step": 3}, last)
    assert resume_checkpoint(cfg, tmp_path) == str(last)
    # A truncated file (a copy cut short, a full disk) is refused with what to do, not torch's zip error.
    last.write_bytes(last.read_bytes()[:-100])
    torch.save({"global_step": 2}, tmp_path / "checkpoints" / "best-epoch0-step2.ckpt")
    with pytest.raises(ConfigError, match=re.escape(f"resume=auto: {last} is not a complete checkpoint") +
                       ".*ckpt_path=<file> \\(best-epoch0-step2.ckpt\\), or move it aside"):
        resume_checkpoint(cfg, tmp_path)
    with pytest.raises(ConfigError, match="ckpt_path=.*last.ckpt: .* is not a complete checkpoint"):
        resume_checkpoint(compose_train([f"ckpt_path={last}"], tmp_path), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        resume_checkpoint(compose_train(["ckpt_path=nope.ckpt"], tmp_path), tmp_path)
    with pytest.raises(ValueError, match="resume='yes'"):
        resume_checkpoint(compose_train(["resume=yes"], tmp_path), tmp_path)


def test_a_resumed_run_keeps_the_first_attempts_logs(tmp_path):
    # W&B: the same run id as the first attempt's offline run, so both sync into one W&B run.
    (tmp_path / "wandb" / "offline-run-20261121_101500-abc123").mkdir(parents=True)
    assert resumed_logger_settings(compose_train(["logger=wandb"], tmp_path), tmp_path) == {"id": "abc123", "resume": "allow"}
    # CSV: a new version dir (Lightning would delete the first attempt's metrics.csv).
    assert resumed_logger_settings(compose_train(["logger=csv"], tmp_path), tmp_path)["version"].startswith("resumed-")


def test_resume_auto_on_a_finished_run_says_so_instead_of_starting_over(tmp_path):
    cfg = compose_train(["resume=auto"], tmp_path)
    (tmp_path / "summary.json").write_text("{}\n")  # finished; KeepAfterFit removed its last.ckpt
    with pytest.raises(ConfigError) as error:
        resume_checkpoint(cfg, tmp_path)
    assert str(error.value) == (
        f"resume=auto: the run in {tmp_path} has finished (summary.json), and its last.ckpt was removed when training "
        "ended. Start a new run in another hydra.run.dir, or keep last.ckpt next time with "
        "callbacks.keep_after_fit.keep_last=true.")
