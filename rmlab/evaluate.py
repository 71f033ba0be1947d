"""Evaluate a trained reward model: `python -m rmlab.evaluate ckpt=<path.ckpt> [data=local data.path=...]`.

Rebuilds the model and its data settings from the config stored in the checkpoint, scores the
chosen split (or a given file, whole) and writes the bias report (rmlab.diagnostics) into the
run dir: report.json, report.md, PNG plots; the same numbers go to the logger (W&B offline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf

from rmlab.config import CONFIG_DIR
from rmlab.hardware import best_precision
from rmlab.launch import short_user_errors
from rmlab.trained import load_checkpoint, load_reward_model

log = logging.getLogger(__name__)


def non_null(settings: dict) -> dict:
    """The keys that are set: None values dropped, nested dicts too (so `data.columns.margin=gap` replaces
    that one column name and keeps the checkpoint's others)."""
    out = {}
    for key, value in settings.items():
        value = non_null(value) if isinstance(value, dict) else value
        if value is not None and value != {}:
            out[key] = value
    return out


def data_config(run_cfg: DictConfig, overrides: DictConfig | None, split: str) -> tuple[dict, str]:
    """The checkpoint's data config with the non-null `data.*` overrides applied. A file given as
    data.path (or data.test_path) is evaluated whole, as the test split."""
    given = non_null(OmegaConf.to_container(overrides, resolve=False) if overrides else {})
    if given.get("path") or given.get("test_path"):
        given.update(source=None, test_path=given.get("test_path") or given["path"], path=None, val_path=None)
        split = "test"
    if given.get("source") is not None:  # another source replaces the checkpoint's, never merges into it
        run_cfg = OmegaConf.merge(run_cfg, {"data": {"source": None}})
    merged = OmegaConf.merge(run_cfg, {"data": given})  # interpolations in `given` resolve against the run config
    return OmegaConf.to_container(merged.data, resolve=True), split


def evaluate(cfg: DictConfig) -> dict:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.split not in ("test", "val"):
        raise ValueError(f"split={cfg.split!r}; choose test or val")
    model, run_cfg = load_reward_model(load_checkpoint(cfg.ckpt, cfg.trust_remote_code))
    data_cfg, split = data_config(run_cfg, cfg.get("data"), cfg.split)
    datamodule = instantiate(data_cfg)

    precision = str(cfg.trainer.precision)  # default 32-true: the rewards an fp32 consumer of the export gets
    if precision == "auto":  # asked for speed: bf16 where this hardware runs it faster
        precision = best_precision(str(cfg.trainer.accelerator))
    log.info("evaluating in precision %s%s", precision, "" if precision in ("32-true", "32", "64-true") else
             " (faster; rewards differ from the fp32 rewards of an export by rounding, so near-tie pairs can flip)")
    diagnostics = instantiate(cfg.diagnostics, report_title=f"Bias report: {cfg.ckpt} on {split} data (precision {precision})",
                              augment=OmegaConf.to_container(run_cfg.data, resolve=True).get("augment"))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices, precision=precision,
                        logger=logger, callbacks=[diagnostics], enable_checkpointing=False, default_root_dir=run_dir)
    try:
        if logger:
            logger.log_hyperparams({"ckpt": str(cfg.ckpt), "split": split, "precision": precision, "data": data_cfg, "model": run_cfg.model})
        # verbose=False: no table of every logged key (~110 rows); the callback logs the report's summary lines
        (trainer.test if split == "test" else trainer.validate)(model, datamodule=datamodule, verbose=False)
        return diagnostics.last_report
    finally:
        if isinstance(logger, WandbLogger):
            import wandb  # here: a run without W&B does not pay for importing it

            wandb.finish()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
