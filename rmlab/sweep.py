"""Hydra sweeps: one W&B run per job, grouped by sweep, and one table that compares the jobs.

python -m rmlab.train -m pooling=last,mean,cls seed=0,1
    -> <sweep dir>/sweep_summary.md   (per job, then mean ± std over seeds per setting)
       <sweep dir>/sweep_summary.csv  (per job, full precision)
       <sweep dir>/sweep_summary_by_setting.csv
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS = ["val/acc", "test/acc", "test/bias/length_balanced_acc", "test/bias/longer_shorter_gap",
           "test/bias/length_spearman", "test/probe/mean_acc", "test/probe/heldout_mean_acc", "test/bias/ece",
           "test/sets/best_of_k_acc", "test/sets/regret", "test/sets/kendall_tau", "test/sets/rm_top_longest",
           "test/sets/gold_top_longest", "wall_time_s"]
LABELS = {  # column names in the Markdown table; other metrics keep their logged name
    "val/acc": "val acc",
    "test/acc": "test acc",
    "test/bias/length_balanced_acc": "length-balanced acc",
    "test/bias/longer_shorter_gap": "acc gap longer-shorter",
    "test/bias/length_spearman": "reward-length spearman",
    "test/probe/mean_acc": "probe mean acc",
    "test/probe/heldout_mean_acc": "held-out probe acc",
    "test/bias/ece": "ECE",
    "test/sets/best_of_k_acc": "best-of-K acc",
    "test/sets/regret": "regret",
    "test/sets/kendall_tau": "Kendall tau",
    "test/sets/rm_top_longest": "RM top is longest",
    "test/sets/gold_top_longest": "gold top is longest",
    "wall_time_s": "wall time (s)",
}


# A job is fine only with these in its summary.json as numbers (test/acc only when it was tested).
REQUIRED = ("val/acc", "test/acc")


def job_status(summary: dict | None) -> str:
    """'ok'; 'failed' when the job wrote no summary.json (it stopped with an error: see its train.log);
    'no metrics: <why>' when it finished but val/acc is missing, or val/acc or test/acc is null or NaN
    (e.g. training ended before its first validation, so no score and no best checkpoint)."""
    if summary is None:
        return "failed"
    problems = []
    for key in REQUIRED:
        value = summary.get(key)
        if value is None and (key in summary or key == "val/acc"):
            problems.append(f"{key} {'null' if key in summary else 'missing'}")
        elif isinstance(value, (int, float)) and math.isnan(value):
            problems.append(f"{key} NaN")
    if not problems:
        return "ok"
    if "best_checkpoint" in summary and not summary["best_checkpoint"]:
        problems.append("no checkpoint (no validation ran?)")
    return "no metrics: " + ", ".join(problems)


def read_jobs(sweep_dir: Path) -> list[dict]:
    """Every job under a sweep dir (a dir with .hydra/overrides.yaml), in job order: its overrides,
    status (job_status) and summary."""
    jobs = []
    for overrides_file in sweep_dir.glob("**/.hydra/overrides.yaml"):
        job_dir = overrides_file.parent.parent
        overrides = dict(_split_override(o) for o in yaml.safe_load(overrides_file.read_text()) or [])
        summary_file = job_dir / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        jobs.append({"job": job_dir.relative_to(sweep_dir).as_posix(), "overrides": overrides,
                     "status": job_status(summary), "summary": summary or {}})
    return sorted(jobs, key=lambda job: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", job["job"])])


def by_setting(jobs: list[dict], metrics: Sequence[str], over: Sequence[str] = ("seed",)) -> list[dict]:
    """Mean and sample std of each metric over the finished jobs of each setting (the jobs' overrides
    except the keys in `over`), in order of first appearance; n counts the jobs with status 'ok', failed the
    rest (no summary.json, or no metrics)."""
    groups: dict[tuple, list[dict]] = {}
    for job in jobs:
        setting = {k: v for k, v in job["overrides"].items() if k not in over}
        groups.setdefault(tuple(sorted(setting.items())), []).append(job)
    rows = []
    for members in groups.values():
        finished = [job for job in members if job["status"] == "ok"]
        row: dict[str, Any] = {"overrides": {k: v for k, v in members[0]["overrides"].items() if k not in over},
                               "n": len(finished), "failed": len(members) - len(finished)}
        for metric in metrics:
            values = [float(job["summary"][metric]) for job in finished if job["summary"].get(metric) is not None]
            row[metric] = (sum(values) / len(values) if values else None,
                           statistics.stdev(values) if len(values) > 1 else None)
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path, metrics: Sequence[str] = METRICS, over: Sequence[str] = ("seed",)) -> Path:
    """Write sweep_summary.csv (per job), sweep_summary_by_setting.csv (mean, std over `over`) and
    sweep_summary.md (both, 3 decimals) into the sweep dir; return the Markdown file's path."""
    jobs = read_jobs(sweep_dir)
    settings = by_setting(jobs, metrics, over)
    keys = list(dict.fromkeys(k for job in jobs for k in job["overrides"]))
    _write_csv(sweep_dir / "sweep_summary.csv", ["job", *keys, "status", *metrics],
               [[job["job"], *(job["overrides"].get(k, "") for k in keys), job["status"],
                 *(job["summary"].get(m, "") for m in metrics)] for job in jobs])
    setting_keys = [k for k in keys if k not in over]
    _write_csv(sweep_dir / "sweep_summary_by_setting.csv",
               [*setting_keys, "n", "failed", *(f"{m} {stat}" for m in metrics for stat in ("mean", "std"))],
               [[*(row["overrides"].get(k, "") for k in setting_keys), row["n"], row["failed"],
                 *("" if v is None else v for m in metrics for v in row[m])] for row in settings])
    markdown = sweep_dir / "sweep_summary.md"
    markdown.write_text(_markdown(sweep_dir, jobs, settings, keys, metrics, over))
    return markdown


def _markdown(sweep_dir: Path, jobs: list[dict], settings: list[dict], keys: list[str], metrics: Sequence[str],
              over: Sequence[str]) -> str:
    """The jobs table (a column per key that differs between jobs, the others listed once), then the
    mean ± std table when a key of `over` was swept. Metrics that no job reported (the pair metrics in a
    sweep over response sets, the set metrics in one over pairs) are left out; the CSVs keep them."""
    metrics = [m for m in metrics if any(m in job["summary"] for job in jobs)] or list(metrics)
    swept = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    common = [f"{k}={jobs[0]['overrides'][k]}" for k in keys if k not in swept]
    labels = [LABELS.get(m, m) for m in metrics]
    failed = sum(job["status"] != "ok" for job in jobs)
    crashed = sum(job["status"] == "failed" for job in jobs)
    notes = ([f"{crashed} wrote no summary.json (see their train.log)"] if crashed else []) + (
        [f"{failed - crashed} finished without metrics (status says which)"] if failed > crashed else [])
    lines = [f"# Sweep {sweep_dir}", "", f"{len(jobs)} jobs: {len(jobs) - failed} ok, {failed} failed"
             + (f" ({'; '.join(notes)})." if notes else "."), ""]
    if common:
        lines += [f"Common overrides: `{' '.join(common)}`", ""]
    lines += ["## Jobs", "", *_markdown_table(
        ["job", *swept, "status", *labels],
        [[job["job"], *(job["overrides"].get(k, "") for k in swept), job["status"],
          *(_fmt(job["summary"].get(m)) for m in metrics)] for job in jobs])]
    if any(k in over for k in swept):
        setting_swept = [k for k in swept if k not in over]
        lines += ["", f"## Mean ± std over {', '.join(over)} (std: sample, n-1)", "", *_markdown_table(
            [*setting_swept, "n", *(["failed"] if failed else []), *labels],
            [[*(row["overrides"].get(k, "") for k in setting_swept), str(row["n"]),
              *([str(row["failed"])] if failed else []), *(_fmt_mean_std(*row[m]) for m in metrics)]
             for row in settings])]
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml, hydra.callbacks): rewrite the sweep summary after every job of a
    multirun and once more at the end. Per job because a failed job makes the sweeper raise once its
    batch is done, and then Hydra never calls on_multirun_end; a killed sweep keeps its table too."""

    def __init__(self, metrics: Sequence[str] = METRICS, over: Sequence[str] = ("seed",)) -> None:
        self.metrics, self.over = list(metrics), list(over)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            path = write_summary(Path(config.hydra.sweep.dir), self.metrics, self.over)
            log.info("sweep summary so far: %s", path)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        log.info("sweep summary: %s", write_summary(Path(config.hydra.sweep.dir), self.metrics, self.over))


def _split_override(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _fmt(value: Any) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, (int, float)) else str(value)


def _fmt_mean_std(mean: float | None, std: float | None) -> str:
    return _fmt(mean) if std is None else f"{mean:.3f} ± {std:.3f}"
