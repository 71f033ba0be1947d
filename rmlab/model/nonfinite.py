"""What a training or eval step does with a NaN or infinite loss or reward (model.on_nonfinite).

`stop` raises NonFiniteError naming the step and the pairs at fault (their file and line where the
split has an `origin` column); `skip` has the module drop that update (training) or keep scoring
(evaluation), with a warning. Every rank takes the same branch, so DDP never waits on one that left.
"""

from __future__ import annotations

import lightning as L
import torch

from rmlab.data.batch import Batch
from rmlab.errors import ConfigError, NonFiniteError

NONFINITE_POLICIES = ("stop", "skip")


def check_policy(on_nonfinite: str) -> None:
    """Raises ConfigError for a policy that is not one of NONFINITE_POLICIES."""
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(f"model.on_nonfinite={on_nonfinite!r}; choose stop (raise, naming the step and the "
                          "pairs) or skip (skip that batch's update, counted in train/skipped_nonfinite)")


def pair_names(module: L.LightningModule, split: str, index: torch.Tensor | None, rows: list[int]) -> list[str]:
    """Batch rows as the user can find them: the data's `origin` (file and line) where the split
    has that column, with the row id in the split."""
    if index is None:
        return [f"batch row {row}" for row in rows]
    ids = [int(index[row]) for row in rows]
    dataset = getattr(getattr(module.trainer, "datamodule", None), "splits", {}).get(split)
    if dataset is None or "origin" not in dataset.column_names:
        return [f"{split} row {i}" for i in ids]
    origins = dataset.select_columns(["origin"])[ids]["origin"]
    return [f"{origin} ({split} row {i})" for origin, i in zip(origins, ids)]


def nonfinite_problem(module: L.LightningModule, on_nonfinite: str, split: str, batch: Batch, batch_idx: int,
                      loss: torch.Tensor, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> str | None:
    """None when the loss ([]) and every reward ([B] each) are finite on every rank; else what went
    wrong where. Raises NonFiniteError under on_nonfinite=stop."""
    # A pair is at fault when its rewards, or what the loss reads of it (label margin, weight), are not finite.
    logits = reward_chosen - reward_rejected - (batch["label_margin"] if batch.get("label_margin") is not None else 0)
    if batch.get("weight") is not None:
        logits = logits * batch["weight"]
    rows_finite = torch.isfinite(reward_chosen) & torch.isfinite(reward_rejected) & torch.isfinite(logits)
    bad_here = not bool(rows_finite.all() & torch.isfinite(loss))
    # Every rank must take the same branch: one rank skipping its backward (or raising) while
    # the others go on would leave them waiting for it in the gradient all-reduce.
    if not module.trainer.strategy.reduce_boolean_decision(bad_here, all=False):
        return None
    where = f"at global step {module.global_step}, epoch {module.current_epoch}, {split} batch {batch_idx}"
    if not bad_here:
        message = f"non-finite loss or reward on another rank {where}"
    else:
        rows = (~rows_finite).nonzero().flatten().tolist()
        names = pair_names(module, split, batch.get("index"), rows[:5])
        pairs = "; ".join(names) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")
        culprits = f"pairs: {pairs}" if rows else f"every pair's rewards are finite ({len(rows_finite)} in the batch)"
        message = f"non-finite loss ({float(loss.detach()):.4g}) or reward {where}; {culprits}"
    if on_nonfinite == "stop":
        raise NonFiniteError(f"{message}. Lower model.optimizer.lr, check those pairs, or set "
                             "model.on_nonfinite=skip to skip such batches")
    return message
