"""Bias diagnostics at every validation and after testing, as a Lightning callback."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.trainer.states import TrainerFn

from rmlab.data.collate import PairCollator
from rmlab.diagnostics import report as bias_report
from rmlab.diagnostics.probes import build_probe_items
from rmlab.diagnostics.set_report import set_report, set_scalars, write_set_report
from rmlab.model.eval_store import gather_unique

log = logging.getLogger(__name__)


def augment_kinds(augment: dict | None) -> tuple[list[str], bool]:
    """The kinds of a run's data.augment settings, and whether augmentation was on (share > 0): the
    probes of those kinds are not held out."""
    augment = augment or {}
    return list(augment.get("kinds") or []), bool(augment.get("share"))


class BiasDiagnostics(L.Callback):
    """Reads the per-pair rewards of validation/test (`RewardModel.eval_rewards`),
    rewrites held-out pairs with the adversarial probes and scores them, and computes the bias
    report (rmlab.diagnostics.report). Scalars go to every logger under `val/bias/...`,
    `val/probe/...`, `val/subset/...` (`test/...` after testing); W&B also gets tables, histograms
    and plots. After testing (or a standalone validate), report.json, report.md and PNG plots are
    written to `report_dir`.

    Under DDP the rewards are every rank's, each pair once (the module gathers them by row index,
    so the duplicates a DistributedSampler pads with are counted once) and the probe set is scored
    in shards; tables, images and files come from rank 0.

    `augment` is the data.augment settings the model was trained with (rmlab.train and rmlab.evaluate
    pass them): probes of the kinds it trained on are reported apart from the held-out ones.
    """

    def __init__(self, enabled: bool = True, probes: Sequence[str] | None = None, val_probe_pairs: int | None = 100,
                 test_probe_pairs: int | None = 500, probe_seed: int = 0, bucket_width: int = 100,
                 match_tolerance: float = 0.1, calibration_bins: int = 10, top_fraction: float = 0.25, worst_k: int = 20,
                 subset_columns: Sequence[str] = ("subset", "task", "flaw"), report_dir: str | None = None,
                 report_title: str = "Reward model bias report", augment: dict | None = None):
        self.enabled = enabled
        self.probes = list(probes) if probes is not None else None
        self.probe_pairs = {"val": val_probe_pairs, "test": test_probe_pairs}
        self.probe_seed = probe_seed
        self.settings = {"bucket_width": bucket_width, "match_tolerance": match_tolerance, "calibration_bins": calibration_bins,
                         "top_fraction": top_fraction, "worst_k": worst_k, "subset_columns": tuple(subset_columns)}
        self.report_dir = Path(report_dir) if report_dir else None
        self.report_title = report_title
        self.augment = dict(augment) if augment else None
        self.last_report: dict[str, Any] | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled and not trainer.sanity_checking:
            self._diagnose(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._diagnose(trainer, pl_module, "test")

    # -- computing -----------------------------------------------------------------------------
    def _score(self, trainer: L.Trainer, pl_module: L.LightningModule, items: list[dict]) -> torch.Tensor:
        """Rewards of the probe responses; each rank scores every world_size-th item, in batches of similar
        lengths (the rewrites range from a few tokens to data.max_length: less padding)."""
        datamodule = trainer.datamodule
        rank, world = trainer.global_rank, trainer.world_size
        mine = sorted(range(rank, len(items), world), key=lambda j: len(items[j]["input_ids"]))
        collator = PairCollator(datamodule.tokenizer.pad_token_id, datamodule.tokenizer.padding_side)
        rewards = []
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for start in range(0, len(mine), datamodule.eval_batch_size):
                chunk = mine[start:start + datamodule.eval_batch_size]
                batch = collator.pad([items[j]["input_ids"] for j in chunk])
                rewards.append(pl_module(batch["input_ids"].to(pl_module.device), batch["attention_mask"].to(pl_module.device)).float())
        local = torch.cat(rewards) if rewards else torch.zeros(0, device=pl_module.device)
        index, values = gather_unique(pl_module, torch.tensor(mine, dtype=torch.long), local)
        if len(index) != len(items):
            raise RuntimeError(f"scored {len(index)} of {len(items)} probe responses")
        return values

    @staticmethod
    def _visible(datamodule, split, items: list[dict]) -> tuple[list[dict], Counter]:
        """Tokenizes the rewrites and drops those the model cannot see: when truncation to
        data.max_length cuts the change off, the rewrite has the original's tokens and tests nothing."""
        original = {side: split[f"{side}_input_ids"] for side in ("chosen", "rejected")}
        kept, invisible = [], Counter()
        for item in items:
            item["input_ids"] = datamodule.encode_response(item["prompt"], item["text"])
            if item["input_ids"] == original[item["source"]][item["pair_index"]]:
                invisible[item["probe"]] += 1
            else:
                kept.append(item)
        return kept, invisible

    def _diagnose_sets(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Response-set data: best-of-K metrics against the gold scores and the pick-the-longest and
        random baselines (rmlab.diagnostics.sets), logged as `<stage>/sets/...`; after testing (or a
        standalone validate) also the best-of-N audit (rmlab.diagnostics.bon) in report.json/report.md
        and bon.png. The pair diagnostics (length buckets, patterns, probes) read pairs and are not run."""
        scored = pl_module.eval_set_rewards(stage)
        if len(scored) == 0:
            return
        split = trainer.datamodule.splits[stage].select(scored.index.tolist())
        report = set_report(scored, split["responses"], split["origin"], self.settings["worst_k"])
        report["stage"], report["step"] = stage, trainer.global_step
        self.last_report = report
        for key, value in set_scalars(report, stage).items():
            pl_module.log(key, value, sync_dist=False, rank_zero_only=True)
        if trainer.is_global_zero and trainer.state.fn != TrainerFn.FITTING and self.report_dir is not None:
            write_set_report(report, self.report_dir, self.report_title)
            log.info("response-set report: %s", self.report_dir / "report.md")

    def _diagnose(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(trainer.datamodule, "sets", False):
            return self._diagnose_sets(trainer, pl_module, stage)
        start = time.perf_counter()
        scored = pl_module.eval_rewards(stage)  # the whole split, gathered from every rank
        if len(scored) == 0:
            return
        split = trainer.datamodule.splits[stage].select(scored.index.tolist())
        columns = [c for c in split.column_names if not c.endswith("_input_ids")]
        pairs = split.select_columns(columns).to_dict()
        rows = [dict(zip(pairs, values)) for values in zip(*pairs.values())]
        # During fit: a quick look at every validation. Testing or a standalone validate: the full report.
        full = trainer.state.fn != TrainerFn.FITTING
        items = build_probe_items(rows, self.probes, self.probe_pairs["test" if full else "val"], self.probe_seed)
        items, invisible = self._visible(trainer.datamodule, split, items)
        if full:
            log.info("%s: scoring %d probe responses (%d left out: change cut off by data.max_length)",
                     stage, len(items), sum(invisible.values()))
        item_rewards = self._score(trainer, pl_module, items) if items else None
        reward_chosen, reward_rejected = scored.reward_chosen, scored.reward_rejected
        kinds, augmented = augment_kinds(self.augment)
        report = bias_report.build_report(pairs, reward_chosen, reward_rejected, items, item_rewards,
                                          augment_kinds=kinds, augmented=augmented, **self.settings)
        for name, probe in report["probes"].items():
            probe["invisible"] = invisible[name]  # rewrites cut off by max_length, not scored
        report["stage"], report["step"] = stage, trainer.global_step
        report["probe_responses_scored"], report["seconds"] = len(items), round(time.perf_counter() - start, 1)
        self.last_report = report
        for key, value in bias_report.scalars(report, stage).items():
            pl_module.log(key, value, sync_dist=False, rank_zero_only=True)
        if not trainer.is_global_zero:
            return
        images = None
        if full and self.report_dir is not None:
            images = bias_report.write(report, reward_chosen, reward_rejected, pairs, self.report_dir, self.report_title)
            log.info("bias report: %s\n%s", self.report_dir / "report.md", "\n".join(bias_report.summary_lines(report)))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                bias_report.log_wandb(logger.experiment, report, reward_chosen, reward_rejected, stage, trainer.global_step, images)
