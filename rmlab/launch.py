"""How a training run starts: launch checks (sweeps, cluster launchers), what it resumes from, the
logger it starts with, and how a user-input error leaves the command line."""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from rmlab.errors import ConfigError, DataError, NonFiniteError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger, WandbLogger

log = logging.getLogger(__name__)


# What to say for a required value (`???` in its config file) that the command did not set.
REQUIRED_HINTS = {
    "data.path": "data=local reads your pairs from a file: add data.path=<file> (JSONL, JSON, Parquet or CSV, "
                 "gzipped too), e.g. python -m rmlab.train data=local data.path=pairs.jsonl",
}


def check_required(cfg: DictConfig) -> None:
    """Every `???` value is set on the command line (else OmegaConf stops deep inside instantiate). Pure
    config: `python -m rmlab.train` runs it before importing torch, so `data=local` without a path answers at once."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError("\n".join(f"{key} is not set: " + REQUIRED_HINTS.get(key, f"add {key}=<value> to the command")
                                     for key in missing))


def check_launch(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun (-m) whose jobs would start several processes: with ddp every re-launched
    child re-runs the whole sweep; with ddp_spawn the fit results stay in the spawned processes."""
    trainer = cfg.trainer
    strategy, devices = str(trainer.get("strategy", "auto")), trainer.get("devices", "auto")
    if isinstance(devices, ListConfig):  # GPU ids
        processes = len(devices)
    elif str(devices) in ("auto", "-1"):  # every device of the accelerator; on CPU, "auto" is one
        import torch  # here: `python -m rmlab.train` answers a bad override before torch is imported

        processes = torch.cuda.device_count() if str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else 1
    else:  # a count, or GPU ids as "0,1"
        processes = int(devices) if str(devices).isdigit() else len(str(devices).split(","))
    processes = max(processes, 1) * int(trainer.get("num_nodes", 1))
    if HydraConfig.get().mode == RunMode.MULTIRUN and ("ddp" in strategy or processes > 1):
        raise ConfigError(
            f"trainer.strategy={strategy} with {processes} process(es) cannot run inside a Hydra multirun (-m): "
            "with ddp each child process would re-run the whole sweep, and with ddp_spawn Lightning does not hand "
            "the best val/acc, step count and model state back to the sweep's process. Sweep with trainer.devices=1 "
            "(and no ddp strategy), or run one job per trial, each its own command: "
            "`for seed in 0 1; do python -m rmlab.train trainer.strategy=ddp trainer.devices=2 seed=$seed; done`."
        )


def name_sweep_run(cfg: DictConfig) -> None:
    """In a Hydra multirun, group the W&B run by sweep dir and name it after the job's overrides,
    unless logger.group / logger.name are set. Single runs are left as they are."""
    hydra_cfg = HydraConfig.get()
    logger = cfg.get("logger")
    if hydra_cfg.mode != RunMode.MULTIRUN or not logger or not str(logger.get("_target_")).endswith("WandbLogger"):
        return
    with open_dict(logger):
        if logger.get("group") is None:
            logger.group = str(hydra_cfg.sweep.dir)[-128:]  # W&B caps a group name at 128 characters
        if logger.get("name") is None:
            logger.name = hydra_cfg.job.override_dirname or f"job {hydra_cfg.job.num}"


def check_shared_run_dir() -> None:
    """Under torchrun or a multi-task SLURM job every rank composes its own config; an unpinned
    run dir (`${now:...}`) would split one run into a dir per rank."""
    external = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    pinned = any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
    if external and not pinned:
        raise ConfigError("launched by torchrun/SLURM without hydra.run.dir: each rank would pick its own timestamped "
                          "run dir. Pass the same dir to every rank, e.g. hydra.run.dir=/shared/runs/$SLURM_JOB_ID")


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint that fit continues from: `ckpt_path=<file>`, or with `resume=auto` the run
    dir's checkpoints/last.ckpt when there is one (a fresh start otherwise)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no such file ({path.resolve()})")
        return _complete(path, f"ckpt_path={cfg.ckpt_path}")
    resume = cfg.get("resume")
    if resume in (None, False, "never"):
        return None
    if resume != "auto":
        raise ConfigError(f"resume={resume!r}; choose auto (continue from <run dir>/checkpoints/last.ckpt) or null, "
                          "or give ckpt_path=<file.ckpt>")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file() and (run_dir / "summary.json").is_file():
        raise ConfigError(f"resume=auto: the run in {run_dir} has finished (summary.json), and its last.ckpt was removed "
                          "when training ended. Start a new run in another hydra.run.dir, or keep last.ckpt next time "
                          "with callbacks.keep_after_fit.keep_last=true.")
    if not last.is_file():
        log.info("resume=auto: no %s yet, starting fresh", last)
        return None
    return _complete(last, "resume=auto")


def _complete(path: Path, option: str) -> str:
    """`path` if it is a whole checkpoint file (torch.save writes a zip archive; a truncated one has
    lost its central directory at the end), else a ConfigError saying what to do."""
    if not zipfile.is_zipfile(path):
        others = sorted(p.name for p in path.parent.glob("*.ckpt") if p != path)
        raise ConfigError(f"{option}: {path} is not a complete checkpoint (truncated or damaged: copied incompletely, "
                          "a full disk, or a save killed midway by an rmlab older than its atomic saves). Continue from "
                          f"another checkpoint with ckpt_path=<file> ({', '.join(others) or 'none beside it'}), or move "
                          "it aside to start fresh.")
    return str(path)


def resumed_logger_settings(cfg: DictConfig, run_dir: Path) -> dict:
    """Keep the first attempt's logs: CSV into a new version dir (Lightning would delete the old
    metrics.csv), W&B under the same run id (offline runs sync into one W&B run)."""
    target = str(cfg.logger.get("_target_", ""))
    if target.endswith("CSVLogger"):
        return {"version": time.strftime("resumed-%Y%m%d-%H%M%S")}
    previous = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime) if target.endswith("WandbLogger") else []
    return {"id": previous[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if previous else {}


def start_logger(logger_cfg: DictConfig, settings: dict) -> Logger:
    """The run's logger, with a W&B run already started: online when asked and W&B answers in time
    (logger.settings.init_timeout), else offline, else CSV. Losing W&B must never stop training."""
    # Here, not at the top: rmlab.score and rmlab.audit import this module and start no logger (Lightning: ~5 s).
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    logger = instantiate(logger_cfg, **settings)
    if not isinstance(logger, WandbLogger):
        return logger
    save_dir = Path(logger.save_dir or ".")
    if not logger_cfg.get("offline"):
        problem = _start_online(logger)
        if problem is None:
            return logger
        log.warning("W&B online run could not start (%s). Logging offline instead; upload later with "
                    "`wandb sync %s`.", problem, save_dir / "wandb" / "offline-run-*")
        # mode= as well: Lightning's offline flag only sets WANDB_MODE, which a started W&B session ignores.
        logger = instantiate(logger_cfg, **settings, offline=True, mode="offline")
    mode = os.environ.get("WANDB_MODE")
    try:
        logger.experiment  # noqa: B018 (the property starts the W&B run: where it fails, we fall back)
        return logger
    except Exception as error:  # e.g. an invalid WANDB_MODE
        log.warning("W&B could not start even offline (%s). Logging metrics to %s instead.", _one_line(error),
                    save_dir / "csv" / "metrics.csv")
        return CSVLogger(save_dir, name="csv", version="")
    finally:
        # Lightning's offline mode sets WANDB_MODE=dryrun for the whole process; the next job of a
        # multirun must see the user's own setting again.
        if mode is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = mode


def _start_online(logger: WandbLogger) -> str | None:
    """Start the logger's W&B run online; None when it started, else why not."""
    import wandb

    try:
        # With no API key, wandb.init prompts on a terminal and waits for an answer that may never come.
        if os.environ.get("WANDB_MODE") not in ("offline", "dryrun", "disabled") and not wandb.login(prompt=False, verify=False):
            return "no W&B API key: run `wandb login` or set WANDB_API_KEY"
        logger.experiment  # noqa: B018 (starts the run now, so an unreachable server shows here and not mid-fit)
    except Exception as error:
        return _one_line(error)
    return None


def _one_line(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:500]


def discard_unused_run_dir(log_handlers: list[logging.FileHandler]) -> bool:
    """Remove the run dir of a single run that stopped before doing any work: one that holds nothing
    but Hydra's .hydra/ files, the job log and empty dirs (e.g. checkpoints/, made by the writability
    check). A sweep's job dirs stay (the sweep summary lists them as failed), and so does a dir with
    anything else in it (an earlier run's files, a resume), or the one the command runs in."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    if hydra_cfg is None or hydra_cfg.mode != RunMode.RUN:
        return False
    run_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    logs = {Path(h.baseFilename).resolve() for h in log_handlers}
    if run_dir == Path.cwd().resolve() or run_dir in Path.cwd().resolve().parents:
        return False
    for path in run_dir.rglob("*"):
        if path.is_file() and path not in logs and path.parent != run_dir / ".hydra":
            return False
    for handler in log_handlers:
        logging.getLogger().removeHandler(handler)
        handler.close()
    shutil.rmtree(run_dir)
    return True


class UserInputError(CompactHydraException):
    """A ConfigError, DataError or missing file leaving a Hydra app: Hydra prints a CompactHydraException's message
    alone, without frames; HYDRA_FULL_ERROR=1 still shows the whole chain."""


def user_error(error: BaseException | None) -> Exception | None:
    """The ConfigError, DataError, NonFiniteError or FileNotFoundError (a path the user gave) behind an exception
    (Hydra's instantiate wraps a constructor's error)."""
    while error is not None and not isinstance(error, (ConfigError, DataError, NonFiniteError, FileNotFoundError)):
        error = error.__cause__
    return error


def short_user_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function so that a user-input error (user_error) prints as its message alone, and
    the traceback goes to the job's log file (<run dir>/<job name>.log) instead of the screen."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as error:
            cause = user_error(error)
            if cause is None:
                raise
            message = f"{type(cause).__name__}: {cause}"
            files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
                     and h.baseFilename != os.devnull]
            record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,),
                                    (type(error), error, error.__traceback__))
            for handler in files:
                handler.handle(record)
            if files and discard_unused_run_dir(files):
                where = "nothing was kept; HYDRA_FULL_ERROR=1 shows the traceback"
            else:
                where = f"the traceback is in {files[0].baseFilename}" if files else "HYDRA_FULL_ERROR=1 shows the traceback"
            raise UserInputError(f"{message}\n({where})") from error

    return run
