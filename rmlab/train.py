"""Train a reward model: `python -m rmlab.train [overrides]` (see conf/train.yaml)."""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from pathlib import Path

import hydra
import lightning as L
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, ListConfig, OmegaConf

from rmlab.config import CONFIG_DIR
from rmlab.hardware import cpu_bf16_speedup
from rmlab.sweep import name_sweep_run

log = logging.getLogger(__name__)


def best_precision(accelerator: str) -> str:
    """`precision: auto`: bf16 autocast on GPUs that have it (fp16 on older ones); on CPU, bf16
    autocast only where this CPU's bf16 matmul beats fp32 (measured once, cached)."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_bf16_speedup() > 1.2 else "32-true"


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


def _resumed_logger_settings(cfg: DictConfig, run_dir: Path) -> dict:
    """Keep the first attempt's logs: CSV into a new version dir (Lightning would delete the old
    metrics.csv), W&B under the same run id (offline runs sync into one W&B run)."""
    target = str(cfg.logger.get("_target_", ""))
    if target.endswith("CSVLogger"):
        return {"version": time.strftime("resumed-%Y%m%d-%H%M%S")}
    previous = sorted((run_dir / "wandb").glob("*run-*"), key=lambda p: p.stat().st_mtime) if target.endswith("WandbLogger") else []
    return {"id": previous[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if previous else {}


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write summary.json into the run dir; return the summary."""
    start = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = best_precision(str(cfg.trainer.accelerator))
        log.info("precision: auto -> %s", cfg.trainer.precision)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    if cfg.get("diagnostics"):
        callbacks.append(instantiate(cfg.diagnostics))
    name_sweep_run(cfg)  # multirun: W&B group = sweep dir, run name = overrides
    resume_from = resume_checkpoint(cfg, run_dir)
    logger_settings = _resumed_logger_settings(cfg, run_dir) if resume_from and cfg.get("logger") else {}
    logger = instantiate(cfg.logger, **logger_settings) if cfg.get("logger") else False
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    model.run_config = resolved  # stored in every checkpoint (see RewardModel.on_save_checkpoint)
    try:
        datamodule.setup("fit")
        data_stats = {f"data/{split}/{k}": v for split, s in datamodule.stats.items() for k, v in s.items()}
        if trainer.is_global_zero:
            OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
            log.info("data: %s", data_stats)
        if logger:
            logger.log_hyperparams(resolved)
            logger.log_metrics({k: float(v) for k, v in data_stats.items()}, step=0)

        if resume_from:
            log.info("resuming from %s", resume_from)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        summary = {
            "val/acc": float(checkpoint.best_model_score) if best else float(trainer.callback_metrics.get("val/acc", float("nan"))),
            "train/steps": trainer.global_step,
            "train/pairs_seen": model.pairs_seen,
        }
        if cfg.test_after_fit:
            trainer.test(model, datamodule=datamodule, ckpt_path=best)  # the path: "best" is ambiguous with last.ckpt
            summary.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        summary.update(data_stats)
        summary.update({
            "best_checkpoint": best,
            "wall_time_s": round(time.time() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        })
        if trainer.is_global_zero:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            log.info("summary: %s", json.dumps(summary))
        return summary
    finally:
        if isinstance(logger, WandbLogger):
            wandb.finish()  # so the next job of a multirun starts a fresh W&B run


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    check_launch(cfg)
    check_shared_run_dir()
    return train(cfg)["val/acc"]


if __name__ == "__main__":
    main()
