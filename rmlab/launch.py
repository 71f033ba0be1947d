"""How a training run starts: launch checks (sweeps, cluster launchers) and what it resumes from."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig

log = logging.getLogger(__name__)


def check_launch(cfg: DictConfig) -> None:
    """Refuse a Hydra multirun (-m) whose jobs would start several processes: with ddp every re-launched
    child re-runs the whole sweep; with ddp_spawn the fit results stay in the spawned processes."""
    trainer = cfg.trainer
    strategy, devices = str(trainer.get("strategy", "auto")), trainer.get("devices", "auto")
    if isinstance(devices, ListConfig):  # GPU ids
        processes = len(devices)
    elif str(devices) in ("auto", "-1"):  # every device of the accelerator; on CPU, "auto" is one
        processes = torch.cuda.device_count() if str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") else 1
    else:  # a count, or GPU ids as "0,1"
        processes = int(devices) if str(devices).isdigit() else len(str(devices).split(","))
    processes = max(processes, 1) * int(trainer.get("num_nodes", 1))
    if HydraConfig.get().mode == RunMode.MULTIRUN and ("ddp" in strategy or processes > 1):
        raise ValueError(
            f"trainer.strategy={strategy} with {processes} process(es) cannot run inside a Hydra multirun (-m): "
            "with ddp each child process would re-run the whole sweep, and with ddp_spawn Lightning does not hand "
            "the best val/acc, step count and model state back to the sweep's process. Sweep with trainer.devices=1 "
            "(and no ddp strategy), or run one job per trial, each its own command: "
            "`for seed in 0 1; do python -m rmlab.train trainer.strategy=ddp trainer.devices=2 seed=$seed; done`."
        )


def check_shared_run_dir() -> None:
    """Under torchrun or a multi-task SLURM job every rank composes its own config; an unpinned
    run dir (`${now:...}`) would split one run into a dir per rank."""
    external = "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    pinned = any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra)
    if external and not pinned:
        raise ValueError("launched by torchrun/SLURM without hydra.run.dir: each rank would pick its own timestamped "
                         "run dir. Pass the same dir to every rank, e.g. hydra.run.dir=/shared/runs/$SLURM_JOB_ID")


def resume_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint that fit continues from: `ckpt_path=<file>`, or with `resume=auto` the run
    dir's checkpoints/last.ckpt when there is one (a fresh start otherwise)."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path!r}: no such file ({path.resolve()})")
        return str(path)
    resume = cfg.get("resume")
    if resume in (None, False, "never"):
        return None
    if resume != "auto":
        raise ValueError(f"resume={resume!r}; choose auto (continue from <run dir>/checkpoints/last.ckpt) or null, "
                         "or give ckpt_path=<file.ckpt>")
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        log.info("resume=auto: no %s yet, starting fresh", last)
        return None
    return str(last)


def resumed_logger_settings(cfg: DictConfig, run_dir: Path) -> dict:
    """Keep the first attempt's logs: CSV into a new version dir (Lightning would delete the old
    metrics.csv), W&B under the same run id (offline runs sync into one W&B run)."""
    target = str(cfg.logger.get("_target_", ""))
    if target.endswith("CSVLogger"):
        return {"version": time.strftime("resumed-%Y%m%d-%H%M%S")}
    previous = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime) if target.endswith("WandbLogger") else []
    return {"id": previous[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if previous else {}
