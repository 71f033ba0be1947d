"""What a training run prints, and what it keeps in train.log.

The console shows rmlab's own lines (and any error), a progress bar with the loss and accuracy, and
a short summary at the end; train.log (Hydra's job log, conf/hydra/job_logging/rmlab.yaml) keeps
everything, library warnings and tips included, plus a line of training metrics every N steps and
the validation metrics at every validation (the progress bar and those lines: rmlab.progress).

Hydra sets up the job log from this module before the command runs, so it imports no Lightning,
torch or transformers: `python -m rmlab.train` answers a config error in about a second.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

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


# Libraries that print through handlers of their own (Lightning adds one to "lightning" when imported,
# transformers one to "transformers"); conf/hydra/job_logging/rmlab.yaml sends them through root.
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "transformers")


def route_library_logs() -> None:
    """Send LIBRARY_LOGGERS' records through root, where ConsoleFilter keeps them off the console and
    train.log gets them: what the job-logging config does for loggers that exist when Hydra sets it up,
    done again for those created later (rmlab.train imports Lightning after that, to answer config
    errors fast)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def quiet_libraries(uses_wandb: bool = True) -> None:
    """Route Python warnings into logging (so they reach train.log, not the console), turn off the
    progress bars that datasets and transformers draw for every map, filter and weight load, and W&B's
    console output (a banner, deprecation notes and a 100-row summary; end_summary names the run)
    unless WANDB_SILENT is set already. uses_wandb=False: the run logs no W&B, and W&B is not imported."""
    import datasets
    import transformers

    os.environ.setdefault("WANDB_SILENT", "true")
    if uses_wandb and os.environ["WANDB_SILENT"].lower() == "true":
        import wandb
        # W&B applies WANDB_SILENT when its first run starts; Lightning's WandbLogger warns (about
        # its `anonymous` argument) before that.
        wandb.termsetup(wandb.Settings(silent=True), None)
    logging.captureWarnings(True)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def end_summary(summary: dict, run_dir: Path) -> list[str]:
    """The few lines printed when a run ends: its main numbers and where its files are."""
    def number(key: str) -> str:
        value = summary.get(key)
        return "n/a" if value is None or value != value else f"{value:.3f}"

    sets = "data/train/sets" in summary  # response-set data
    seen = f"{summary.get('train/sets_seen' if sets else 'train/pairs_seen')} training {'sets' if sets else 'pairs'}"
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
