"""Hydra sweeps: the sweep summary on hand-made job dirs, and the real CLI with `-m` (W&B runs grouped
by sweep, the summary after a failed job, multi-process jobs refused, an Optuna search)."""

import csv
import json
import math
from pathlib import Path

import pytest
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import read_write

from rmlab.launch import check_launch
from rmlab.sweep import by_setting, read_jobs, write_summary

from conftest import compose_train, run_cli
from wandb_offline import read_run, records

TINY = ["experiment=smoke", "data.source.n_train=16", "data.source.n_val=16", "data.source.n_test=16"]


def _job(sweep: Path, name: str, overrides: list[str], summary: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        (sweep / name / "summary.json").write_text(json.dumps(summary))


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_summary_of_hand_made_jobs_lists_every_job_and_averages_over_seeds(tmp_path):
    _job(tmp_path, "0", ["experiment=smoke", "pooling=last", "seed=0"], {"val/acc": 0.25, "test/acc": 0.5})
    _job(tmp_path, "1", ["experiment=smoke", "pooling=last", "seed=1"], {"val/acc": 0.75, "test/acc": 1.0})
    _job(tmp_path, "2", ["experiment=smoke", "pooling=mean", "seed=0"], {"val/acc": 0.5, "test/acc": 0.625})
    _job(tmp_path, "10", ["experiment=smoke", "pooling=mean", "seed=1"], None)  # crashed: no summary.json

    jobs = read_jobs(tmp_path)
    assert [(j["job"], j["overrides"]["pooling"], j["overrides"]["seed"], j["status"]) for j in jobs] == [
        ("0", "last", "0", "ok"), ("1", "last", "1", "ok"), ("2", "mean", "0", "ok"), ("10", "mean", "1", "failed")]
    last, mean = by_setting(jobs, ["val/acc", "test/acc"])
    assert last["overrides"] == {"experiment": "smoke", "pooling": "last"} and (last["n"], last["failed"]) == (2, 0)
    assert last["val/acc"] == (0.5, math.sqrt(0.125))  # stdev of 0.25, 0.75: sqrt(2 * 0.25**2 / 1)
    assert last["test/acc"] == (0.75, math.sqrt(0.125))
    assert (mean["n"], mean["failed"], mean["val/acc"]) == (1, 1, (0.5, None))

    markdown = write_summary(tmp_path, ["val/acc", "test/acc"]).read_text()
    assert "4 jobs: 3 ok, 1 failed" in markdown and "Common overrides: `experiment=smoke`" in markdown
    assert "| job | pooling | seed | status | val acc | test acc |" in markdown
    assert "| 1 | last | 1 | ok | 0.750 | 1.000 |" in markdown
    assert "| 10 | mean | 1 | failed |  |  |" in markdown
    assert "| pooling | n | failed | val acc | test acc |" in markdown
    assert "| last | 2 | 0 | 0.500 ± 0.354 | 0.750 ± 0.354 |" in markdown
    assert "| mean | 1 | 1 | 0.500 | 0.625 |" in markdown
    rows = _csv(tmp_path / "sweep_summary.csv")
    assert [(r["job"], r["status"], r["val/acc"]) for r in rows] == [
        ("0", "ok", "0.25"), ("1", "ok", "0.75"), ("2", "ok", "0.5"), ("10", "failed", "")]
    settings = _csv(tmp_path / "sweep_summary_by_setting.csv")
    assert [(r["pooling"], r["n"], r["failed"], r["val/acc mean"], r["val/acc std"]) for r in settings] == [
        ("last", "2", "0", "0.5", repr(math.sqrt(0.125))), ("mean", "1", "1", "0.5", "")]


def test_the_markdown_shows_the_metrics_the_jobs_report_pairs_or_sets(tmp_path):
    sets = {"val/acc": 0.5, "test/acc": 0.625, "test/sets/best_of_k_acc": 0.25, "test/sets/rm_top_longest": 0.75}
    _job(tmp_path, "0", ["data=synthetic_sets", "debias=none"], sets)
    _job(tmp_path, "1", ["data=synthetic_sets", "debias=odin"], {**sets, "test/sets/best_of_k_acc": 0.5})
    markdown = write_summary(tmp_path).read_text()
    assert "| job | debias | status | val acc | test acc | best-of-K acc | RM top is longest |" in markdown
    assert "| 1 | odin | ok | 0.500 | 0.625 | 0.500 | 0.750 |" in markdown
    header = next(csv.reader((tmp_path / "sweep_summary.csv").open()))
    assert header[-2:] == ["test/sets/gold_top_longest", "wall_time_s"]  # the CSV keeps every metric


def test_a_job_whose_summary_lacks_its_metrics_is_not_ok_and_says_why(tmp_path):
    # As `-m pooling=last,mean trainer.max_steps=3` left them before a final validation existed: training
    # ended before the first validation, so val/acc and test/acc are NaN (null in strict JSON) and no checkpoint.
    (tmp_path / "0").mkdir()
    _job(tmp_path, "0", ["pooling=last"], None)
    (tmp_path / "0" / "summary.json").write_text('{"val/acc": NaN, "test/acc": NaN, "best_checkpoint": null}')
    _job(tmp_path, "1", ["pooling=mean"], {"val/acc": None, "test/acc": None, "best_checkpoint": None})
    _job(tmp_path, "2", ["pooling=cls"], {"train/steps": 3})  # no val/acc at all
    _job(tmp_path, "3", ["pooling=last"], {"val/acc": 0.5})  # not tested (test_after_fit=false): fine
    _job(tmp_path, "4", ["pooling=mean"], {"val/acc": 0.75, "test/acc": float("nan"), "best_checkpoint": "b.ckpt"})

    assert [(job["job"], job["status"]) for job in read_jobs(tmp_path)] == [
        ("0", "no metrics: val/acc NaN, test/acc NaN, no checkpoint (no validation ran?)"),
        ("1", "no metrics: val/acc null, test/acc null, no checkpoint (no validation ran?)"),
        ("2", "no metrics: val/acc missing"),
        ("3", "ok"),
        ("4", "no metrics: test/acc NaN")]
    markdown = write_summary(tmp_path, ["val/acc", "test/acc"]).read_text()
    assert "5 jobs: 1 ok, 4 failed (4 finished without metrics (status says which))." in markdown
    assert "| 0 | last | no metrics: val/acc NaN, test/acc NaN, no checkpoint (no validation ran?) | nan | nan |" in markdown
    assert "| 3 | last | ok | 0.500 |  |" in markdown
    assert [(r["job"], r["status"]) for r in _csv(tmp_path / "sweep_summary.csv")][:2] == [
        ("0", "no metrics: val/acc NaN, test/acc NaN, no checkpoint (no validation ran?)"),
        ("1", "no metrics: val/acc null, test/acc null, no checkpoint (no validation ran?)")]
    (last,) = [row for row in by_setting(read_jobs(tmp_path), ["val/acc"], over=()) if row["overrides"] == {"pooling": "last"}]
    assert (last["n"], last["failed"], last["val/acc"]) == (1, 1, (0.5, None))  # the NaN job is not averaged in


@pytest.mark.parametrize("trainer, refused", [
    ("accelerator=cpu devices=1", False),
    ("accelerator=cpu devices=auto", False),
    ("accelerator=cpu devices=2", True),  # strategy auto: Lightning picks ddp for 2 devices
    ("accelerator=cpu devices=2 strategy=ddp_spawn", True),
    ("accelerator=cpu devices=1 strategy=ddp_spawn", True),  # still one spawned process
    ("accelerator=cpu devices=2 strategy=ddp", True),
    ("accelerator=gpu devices=[0,1]", True),
    ("accelerator=gpu devices='0,1'", True),
    ("accelerator=cpu devices=1 num_nodes=2", True),
])
def test_check_launch_refuses_multi_process_jobs_in_a_multirun_only(tmp_path, trainer, refused):
    cfg = compose_train([f"trainer.{override}" for override in trainer.split()], tmp_path)
    check_launch(cfg)  # a single run is always let through (a ddp run re-launches itself correctly)
    hydra_cfg = HydraConfig.get()
    with read_write(hydra_cfg):
        hydra_cfg.mode = RunMode.MULTIRUN
    if refused:
        with pytest.raises(ValueError, match="cannot run inside a Hydra multirun"):
            check_launch(cfg)
    else:
        check_launch(cfg)


def _wandb_run_record(job_dir: Path):
    """The run record (group, display name) of the job's one offline W&B run."""
    (run,) = (job_dir / "wandb").glob("offline-run-*")
    return next(r.run for r in records(next(run.glob("*.wandb"))) if r.WhichOneof("record_type") == "run")


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_2x2_writes_summary_and_groups_wandb_runs_by_sweep(small_sweep):
    sweep, result = small_sweep  # conftest.SMALL_SWEEP: TINY, logger=wandb, pooling=last,cls x seed=0,1
    assert f"sweep summary: {sweep / 'sweep_summary.md'}" in result.stderr + result.stdout

    jobs = _csv(sweep / "sweep_summary.csv")
    assert [(j["job"], j["pooling"], j["seed"], j["status"]) for j in jobs] == [
        ("0", "last", "0", "ok"), ("1", "last", "1", "ok"), ("2", "cls", "0", "ok"), ("3", "cls", "1", "ok")]
    for job in jobs:
        summary = json.loads((sweep / job["job"] / "summary.json").read_text())
        assert float(job["test/bias/length_balanced_acc"]) == summary["test/bias/length_balanced_acc"]
    settings = _csv(sweep / "sweep_summary_by_setting.csv")
    assert [(s["pooling"], s["n"]) for s in settings] == [("last", "2"), ("cls", "2")]
    for setting, pair in zip(settings, (jobs[:2], jobs[2:])):
        for metric in ("val/acc", "test/acc", "test/probe/mean_acc", "wall_time_s"):
            assert float(setting[f"{metric} mean"]) == (float(pair[0][metric]) + float(pair[1][metric])) / 2
    markdown = (sweep / "sweep_summary.md").read_text()
    assert markdown.count("| last | ") == 3 and markdown.count("| cls | ") == 3  # 2 job rows + 1 mean row each

    for job in jobs:
        run = _wandb_run_record(sweep / job["job"])
        overrides = f"data.source.n_test=16,data.source.n_train=16,data.source.n_val=16,diagnostics.val_probe_pairs=0," \
                    f"experiment=smoke,logger=wandb," \
                    f"pooling={job['pooling']},seed={job['seed']}"
        assert (run.run_group, run.display_name) == (str(sweep)[-128:], overrides)
        logged = read_run(next((sweep / job["job"] / "wandb").glob("offline-run-*")))
        assert logged["config"]["logger"]["group"] == str(sweep)[-128:]


@pytest.mark.e2e
@pytest.mark.slow
def test_sweep_with_a_failing_job_still_summarises_the_finished_ones(tmp_path):
    sweep = tmp_path / "sweep"
    # Job 0 raises in configure_optimizers (AdamW rejects lr < 0); Hydra's basic launcher still runs job 1,
    # then re-raises job 0's error, so on_multirun_end never runs: the summary comes from on_job_end.
    result = run_cli("rmlab.train", ["-m", *TINY, "diagnostics.enabled=false", "model.optimizer.lr=-1,1e-5",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode != 0 and "Invalid learning rate: -1" in result.stderr
    jobs = _csv(sweep / "sweep_summary.csv")
    assert [(j["job"], j["model.optimizer.lr"], j["status"]) for j in jobs] == [("0", "-1", "failed"), ("1", "1e-05", "ok")]
    assert jobs[0]["val/acc"] == "" and float(jobs[1]["val/acc"]) == json.loads(
        (sweep / "1" / "summary.json").read_text())["val/acc"]
    assert "2 jobs: 1 ok, 1 failed" in (sweep / "sweep_summary.md").read_text()


@pytest.mark.e2e
def test_multirun_with_ddp_spawn_is_refused_with_advice(tmp_path):
    result = run_cli("rmlab.train", ["-m", *TINY, "seed=0,1", "trainer.accelerator=cpu", "trainer.devices=2",
                   "trainer.strategy=ddp_spawn", f"hydra.sweep.dir={tmp_path / 's'}"], tmp_path, timeout=300)
    assert result.returncode != 0
    assert "trainer.strategy=ddp_spawn with 2 process(es) cannot run inside a Hydra multirun" in result.stderr
    assert "one job per trial" in result.stderr
    assert not list((tmp_path / "s").glob("*/checkpoints"))  # refused before any training


@pytest.mark.e2e
@pytest.mark.slow
def test_optuna_search_runs_two_trials_and_maximizes_val_acc(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="hydra-optuna-sweeper not installed")
    sweep = tmp_path / "sweep"
    result = run_cli("rmlab.train", ["-m", "+hparams_search=optuna", "hydra.sweeper.n_trials=2", *TINY, "diagnostics.enabled=false",
                   f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _csv(sweep / "sweep_summary.csv")
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    for job in jobs:
        assert {"model.optimizer.lr", "pooling", "model.loss.center_rewards_coef"} <= set(job)
        assert job["pooling"] in ("last", "mean", "cls")
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(float(j["val/acc"]) for j in jobs)
