"""Train a reward model: `python -m rmlab.train [overrides]` (see conf/train.yaml)."""

from __future__ import annotations

import logging
import resource
import time
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rmlab import strict_json
from rmlab.config import CONFIG_DIR
from rmlab.console import FILE_ONLY, end_summary, quiet_libraries, route_library_logs
from rmlab.errors import ConfigError
from rmlab.hardware import best_precision
from rmlab.launch import (
    check_launch,
    check_required,
    check_shared_run_dir,
    name_sweep_run,
    resume_checkpoint,
    resumed_logger_settings,
    short_user_errors,
    start_logger,
)

# Lightning, torch, transformers and the modules that import them are imported by train(), not here: `--help`,
# a bad override and the launch checks answer in about a second instead of the five that importing them takes.

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write summary.json into the run dir; return the summary."""
    from rmlab.preflight import check_config, check_disk_space, check_split_sizes

    start = time.time()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    check_config(cfg, run_dir)  # unknown keys, devices, pooling, writable dirs: before anything is built (or imported)
    import lightning as L
    import torch
    from lightning.pytorch.loggers import WandbLogger

    from rmlab.checkpoint import RunRecord
    from rmlab.throughput import KEYS as THROUGHPUT_KEYS

    route_library_logs()  # Lightning and transformers were imported after Hydra set up the job's logging
    L.seed_everything(cfg.seed, workers=True)
    if cfg.trainer.precision == "auto":
        cfg.trainer.precision = best_precision(str(cfg.trainer.accelerator))
        log.info("precision: auto -> %s", cfg.trainer.precision)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    check_disk_space(cfg, model)  # its checkpoints, from the model's size
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    name_sweep_run(cfg)  # multirun: W&B group = sweep dir, run name = overrides
    resume_from = resume_checkpoint(cfg, run_dir)
    logger_settings = resumed_logger_settings(cfg, run_dir) if resume_from and cfg.get("logger") else {}
    logger = start_logger(cfg.logger, logger_settings) if cfg.get("logger") else False
    resolved = OmegaConf.to_container(cfg, resolve=True)  # the config as run (sweep names included)
    callbacks.append(RunRecord(resolved))  # the config and rmlab's version, stored in every checkpoint
    if cfg.get("diagnostics"):  # the probes of the kinds data.augment trains on are reported apart
        callbacks.append(instantiate(cfg.diagnostics, augment=resolved["data"].get("augment")))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    try:
        datamodule.setup("fit")
        if datamodule.sets:
            model.check_set_training()  # before the sanity check and the first step
        data_stats = {f"data/{split}/{k}": v for split, s in datamodule.stats.items() for k, v in s.items()}
        if trainer.is_global_zero:
            OmegaConf.save(OmegaConf.create(resolved), run_dir / "config.yaml")
            log.info("data: %s", data_stats, extra=FILE_ONLY)
            check_split_sizes(datamodule.stats)
        if logger:
            logger.log_hyperparams(resolved)
            logger.log_metrics({k: float(v) for k, v in data_stats.items()}, step=0)

        if resume_from:
            log.info("resuming from %s", resume_from)
            # Lightning cannot see that rmlab's sampler resumes mid-epoch itself (ResumableSampler).
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)  # loading runs no pickled code
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint and checkpoint.best_model_path else None
        if best is None:
            log.warning("fit wrote no best checkpoint (no validation ran: check trainer.check_val_every_n_epoch, "
                        "trainer.limit_val_batches and the callbacks): val/acc is null, and test uses the final weights")
        summary = {
            "val/acc": float(checkpoint.best_model_score) if best else float(trainer.callback_metrics.get("val/acc", float("nan"))),
            "train/steps": trainer.global_step,
            "train/sets_seen" if datamodule.sets else "train/pairs_seen": model.pairs_seen,  # groups trained on
            "train/skipped_nonfinite": model.skipped_nonfinite,
        }
        summary.update({k: float(v) for k, v in trainer.callback_metrics.items() if k in THROUGHPUT_KEYS})
        if cfg.test_after_fit:
            # the path: "best" is ambiguous with last.ckpt; verbose=False: no 100-row table (end_summary says the few numbers)
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
            summary.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
        summary.update(data_stats)
        summary.update({
            "best_checkpoint": best,
            "wall_time_s": round(time.time() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **({"peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if torch.cuda.is_available() else {}),
        })
        if trainer.is_global_zero:
            (run_dir / "summary.json").write_text(strict_json.dumps(summary, indent=2) + "\n")
            log.info("summary: %s", strict_json.dumps(summary), extra=FILE_ONLY)
            for line in end_summary(summary, run_dir):
                log.info(line)
        return summary
    finally:
        if isinstance(logger, WandbLogger):
            import wandb  # here: a run without W&B does not pay for importing it

            wandb.finish()  # so the next job of a multirun starts a fresh W&B run


def check_optimized_metric(cfg: DictConfig) -> None:
    """Before training: optimized_metric must name a key summary.json can have (a split's metric,
    test/... only when the run tests). Raises ConfigError."""
    metric = str(cfg.optimized_metric)
    if not metric.startswith(("val/", "test/", "train/", "data/")) and metric not in ("wall_time_s", "peak_rss_mb"):
        raise ConfigError(f"optimized_metric={metric!r}: name a key of summary.json, e.g. val/acc, test/acc, "
                          "test/bias/length_balanced_acc or train/pairs_per_s")
    if metric.startswith("test/") and not cfg.test_after_fit:
        raise ConfigError(f"optimized_metric={metric!r} needs test_after_fit=true (the run writes no test/ metrics)")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> float:
    """Train; return the summary's `optimized_metric` (what a Hydra sweeper optimises)."""
    check_required(cfg)  # (check_config repeats it for in-process callers of train())
    check_launch(cfg)
    check_shared_run_dir()
    check_optimized_metric(cfg)
    # Warnings into train.log, no progress bars from datasets/transformers; W&B imported only if the run logs to it.
    quiet_libraries(uses_wandb="Wandb" in str(OmegaConf.select(cfg, "logger._target_")))
    summary = train(cfg)
    if cfg.optimized_metric not in summary:
        raise ConfigError(f"optimized_metric={cfg.optimized_metric!r} is not in summary.json; its keys are {sorted(summary)}")
    return summary[cfg.optimized_metric]


if __name__ == "__main__":
    main()
