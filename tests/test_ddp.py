"""DDP under Hydra on CPU (gloo, 2 processes): the same global batch gives the single-process
results, with every val/test pair counted exactly once; one run dir, logs from both ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# 17 val and 17 test pairs: 2 ranks get 9 each, one of them a DistributedSampler repeat that must
# not count twice. 32 train pairs: 4 steps of global batch 8 either way.
COMMON = ["experiment=smoke", "data.source.n_train=32", "data.source.n_val=17", "data.source.n_test=17",
          "trainer.accelerator=cpu", "trainer.precision=32-true", "model.optimizer.lr=1e-3", "logger=csv",
          # One forward per batch: split_by_length would cut a half batch elsewhere than the whole one.
          "model.split_by_length=false"]
# fp32 sums in a different order (two half-batch gradients all-reduced vs one batch), nothing else.
TOLERANCE = 1e-4


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", "rmlab.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.multiprocess
def test_two_processes_with_half_the_batch_match_one_process(tmp_path):
    runs = {}
    for devices, batch_size in ((1, 8), (2, 4)):
        run_dir = tmp_path / f"devices{devices}"
        result = _train([*COMMON, f"trainer.devices={devices}", f"data.batch_size={batch_size}",
                         f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = (run_dir, json.loads((run_dir / "summary.json").read_text()))
    (one_dir, one), (ddp_dir, ddp) = runs[1], runs[2]

    assert ddp["train/steps"] == one["train/steps"] == 4 and ddp["train/pairs_seen"] == one["train/pairs_seen"] == 32
    # The module's own metrics, whole split each: the lr makes 4 steps move the rewards far more
    # than the tolerance, so different batches on the two sides would show.
    for key in ("val/acc", "test/acc", "test/loss", "test/margin", "test/reward_chosen_std", "test/reward_rejected_std",
                "test/bias/length_spearman", "test/probe/mean_acc"):
        assert ddp[key] == pytest.approx(one[key], abs=TOLERANCE), key
    # The loss cannot see a common offset of all rewards, so Adam's normalised steps let rounding
    # differences drift it more (measured: 3.7e-4 on a mean of -5.47 before length-grouped batches,
    # 1.1e-3 on a mean of -0.31 after, while the margins above agree to 1e-4).
    assert ddp["test/reward_chosen_mean"] == pytest.approx(one["test/reward_chosen_mean"], abs=5e-3)
    report = json.loads((ddp_dir / "report.json").read_text())
    assert report["n"] == 17 and report["overall"]["acc"] == pytest.approx(ddp["test/acc"], abs=1e-6)

    # One run dir: checkpoint, summary and report from rank 0, a log file per rank.
    assert sorted(p.name for p in ddp_dir.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    assert len(list((ddp_dir / "checkpoints").glob("*.ckpt"))) == 1
    assert not list(tmp_path.glob("outputs")), "a rank wrote outside the pinned run dir"
