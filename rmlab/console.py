"""What a training run prints, and what it keeps in train.log.

The console shows rmlab's own lines (and any error), a progress bar with the loss and accuracy, and
a short summary at the end; train.log (Hydra's job log, conf/hydra/job_logging/rmlab.yaml) keeps
everything, library warnings and tips included, plus a line of training metrics every N steps and
the validation metrics at every validation.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from tqdm import tqdm

log = logging.getLogger(__name__)

# `log.info(..., extra=FILE_ONLY)`: a line for train.log, not for the console.
FILE_ONLY = {"console": False}


class ConsoleFilter(logging.Filter):
    """Let through rmlab's records (`rmlab.*`, and `__main__` under `python -m rmlab.<tool>`) unless
    marked FILE_ONLY, and errors from anyone; the rest (library warnings, tips) goes to the log file only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        ours = record.name == "__main__" or record.name == "rmlab" or record.name.startswith("rmlab.")
        return ours and getattr(record, "console", True)


class TqdmHandler(logging.StreamHandler):
    """A console handler that writes through tqdm, so a log line never lands in the middle of a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


def quiet_libraries() -> None:
    """Route Python warnings into logging (so they reach train.log, not the console), turn off the
    progress bars that datasets and transformers draw for every map, filter and weight load, and W&B's
    console output (a banner, deprecation notes and a 100-row summary; end_summary names the run)
    unless WANDB_SILENT is set already."""
    import datasets
    import transformers
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ["WANDB_SILENT"].lower() == "true":
        # W&B applies WANDB_SILENT when its first run starts; Lightning's WandbLogger warns (about
        # its `anonymous` argument) before that.
        wandb.termsetup(wandb.Settings(silent=True), None)
    logging.captureWarnings(True)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


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


def end_summary(summary: dict, run_dir: Path) -> list[str]:
    """The few lines printed when a run ends: its main numbers and where its files are."""
    def number(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None or value != value else f"{value:.3f}"

    sets = "data/train/sets" in summary  # response-set data
    seen = f"{summary.get('train/pairs_seen')} training {'sets' if sets else 'pairs'}"
    lines = [f"done in {summary.get('wall_time_s', 0):.0f} s: {summary.get('train/steps')} steps, {seen}",
             f"val/acc {number('val/acc')} (best checkpoint)"]
    if "test/acc" in summary and sets:
        lines.append(
            f"test/acc {number('test/acc')} (ordered pairs ranked right)   best-of-K acc {number('test/sets/best_of_k_acc')} "
            f"(longest {number('test/sets/longest_best_of_k_acc')}, random {number('test/sets/random_best_of_k_acc')})   "
            f"Kendall tau {number('test/sets/kendall_tau')}   regret {number('test/sets/regret')}")
    elif "test/acc" in summary:
        lines.append(
            f"test/acc {number('test/acc')}   length-balanced acc {number('test/bias/length_balanced_acc')}   "
            f"acc when chosen is longer {number('test/bias/acc_chosen_longer')} / shorter "
            f"{number('test/bias/acc_chosen_shorter')}   probe mean acc {number('test/probe/mean_acc')}")
    files = [name for name in ("report.md", "summary.json", "train.log") if (run_dir / name).is_file()]
    lines.append(f"run dir: {run_dir} ({', '.join(files)})")
    if summary.get("best_checkpoint"):
        best = Path(summary["best_checkpoint"])
        size = f", {best.stat().st_size / 1e6:.0f} MB" if best.is_file() else ""
        lines.append(f"best checkpoint: {best}{size}")
    runs = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime)
    if runs and runs[-1].name.startswith("offline-run-"):
        lines.append(f"W&B run (offline): {runs[-1]}; upload with `wandb sync {runs[-1]}`")
    elif runs:
        lines.append(f"W&B run: {runs[-1]}")
    return lines
