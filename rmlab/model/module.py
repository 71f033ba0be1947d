"""The reward model as a LightningModule: backbone -> pooling -> Linear(hidden, 1) -> pairwise loss."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from torch import nn

from rmlab.data.collate import packed_attention, sequence_masks
from rmlab.errors import ConfigError, NonFiniteError
from rmlab.model.backbone import apply_lora, load_backbone
from rmlab.hub import is_causal_decoder

log = logging.getLogger(__name__)
NONFINITE_POLICIES = ("stop", "skip")


def pair_correct(margin: torch.Tensor) -> torch.Tensor:
    """1 where chosen outscores rejected, 0.5 on a tie (a constant scorer gets exactly chance)."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


def pair_metrics(stage: str, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    """Accuracy, loss, mean margin and reward moments of one split, from every pair's rewards."""
    margin = reward_chosen - reward_rejected
    out = {f"{stage}/acc": pair_correct(margin).mean(), f"{stage}/loss": loss, f"{stage}/margin": margin.mean()}
    for side, rewards in (("chosen", reward_chosen), ("rejected", reward_rejected)):
        out[f"{stage}/reward_{side}_mean"] = rewards.mean()
        out[f"{stage}/reward_{side}_std"] = rewards.std(correction=0)
    return {key: float(value) for key, value in out.items()}


def gather_unique(module: L.LightningModule, index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (index, values) rows on every rank, each index once, sorted by index (on CPU).

    A DistributedSampler pads the last shard with repeats of the first rows so that every rank gets
    as many batches; their index is seen twice and is kept once, so a split is counted exactly.
    """
    if module.trainer.world_size > 1:
        device = module.device
        size = int(module.all_gather(torch.tensor(len(index), device=device)).max())
        pad = size - len(index)
        index = torch.cat([index.to(device), torch.full((pad,), -1, device=device, dtype=index.dtype)])
        values = torch.cat([values.to(device), values.new_zeros((pad, *values.shape[1:])).to(device)])
        index, values = module.all_gather(index).flatten(0, 1), module.all_gather(values).flatten(0, 1)
    index, values = index.cpu(), values.float().cpu()
    order = torch.argsort(index, stable=True)
    index, values = index[order], values[order]
    keep = (index >= 0) & torch.cat([torch.tensor([True]), index[1:] != index[:-1]])
    return index[keep], values[keep]


def split_point(lengths: torch.Tensor, min_saving: float = 0.1) -> int | None:
    """Where to cut the rows, sorted by length, into two forwards: the k that minimises
    k * (k-th length) + (n - k) * (longest length), if that saves at least `min_saving` of the
    positions one forward pads; else None (one forward)."""
    n = len(lengths)
    if n < 4:
        return None
    ordered = torch.sort(lengths).values.long()
    k = torch.arange(1, n, device=lengths.device)
    cost = k * ordered[k - 1] + (n - k) * ordered[-1]
    best = int(cost.argmin())
    return int(k[best]) if int(cost[best]) <= (1 - min_saving) * n * int(ordered[-1]) else None


class RewardModel(L.LightningModule):
    """Scores a sequence with one scalar; trained on (chosen, rejected) pairs.

    Chosen and rejected sequences of a batch go through the backbone in one forward pass
    (the collator stacks them: rows [0, B) chosen, [B, 2B) rejected).
    """

    def __init__(
        self,
        backbone: dict,
        pooling: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.0,
        disable_dropout: bool = True,
        lora: dict | None = None,
        on_nonfinite: str = "stop",
        split_by_length: bool = True,
    ):
        super().__init__()
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ConfigError(f"model.on_nonfinite={on_nonfinite!r}; choose stop (raise, naming the step and the "
                              "pairs) or skip (skip that batch's update, counted in train/skipped_nonfinite)")
        self.save_hyperparameters({"backbone": backbone, "warmup_ratio": warmup_ratio, "weight_decay": weight_decay})
        adopts_pooler = hasattr(pooling, "adopt")  # pooling=pooler: the backbone's pooler becomes the pooling's
        self.backbone = load_backbone(**backbone, keep_pooler=adopts_pooler)
        if adopts_pooler:
            pooling.adopt(getattr(self.backbone, "pooler", None), backbone["name_or_path"])
            self.backbone.pooler = None  # its weights now live (and train) in the pooling module
        self.backbone.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        # Models that build positions from arange (Llama, BERT) would shift left-padded rows.
        # (Read before a LoRA wrapper hides the signature behind **kwargs.)
        self._accepts_position_ids = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self._causal = is_causal_decoder(self.backbone.config)  # data.packing=shared_prompt needs one
        if disable_dropout:
            # As in TRL's RewardTrainer default: dropout makes chosen and rejected rows of one
            # pair see different noise, which adds variance to the margin the loss reads.
            for module in self.backbone.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.backbone = apply_lora(self.backbone, **(lora or {}))
        self.pooling = pooling
        # No bias: the pairwise loss cannot see a constant offset (it cancels in the margin), and
        # without one the head is exactly the `score` layer of transformers' *ForSequenceClassification
        # decoders, so exports (rmlab.export) give the same rewards.
        # One output per reward the loss trains (OdinLoss: quality and length); rewards are output 0.
        self.head = nn.Linear(self.backbone.config.hidden_size, getattr(loss, "heads", 1), bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / (self.backbone.config.hidden_size + 1) ** 0.5)
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Per-pair eval outputs of the current epoch: (index, [reward_chosen, reward_rejected, data margin]).
        self._eval_pairs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self._eval_gathered: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {"val": None, "test": None}
        self._eval_has_margin = False
        self.pairs_seen = 0
        self.on_nonfinite = on_nonfinite
        self.split_by_length = split_by_length
        self.positions_computed = 0  # token positions the last batch's forward computed, padding included
        self.skipped_nonfinite = 0  # optimizer updates dropped for a non-finite loss or reward
        self._drop_update = False
        self.run_config: dict | None = None  # the resolved Hydra config, set by rmlab.train

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rmlab_config"] = self.run_config
        checkpoint["rmlab_pairs_seen"] = self.pairs_seen
        checkpoint["rmlab_skipped_nonfinite"] = self.skipped_nonfinite
        checkpoint["rmlab_sequence_end"] = "eos"  # chat-template inputs end at eos (rmlab.data.tokenize.end_at_eos)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads checkpoints from before the head lost its bias (rmlab < 2026-11-21)."""
        if "head.bias" in state_dict:
            state_dict = dict(state_dict)
            bias = float(state_dict.pop("head.bias").reshape(-1)[0])
            log.warning("checkpoint has a reward-head bias (%.4g), dropped: every reward shifts by that constant; "
                        "margins, accuracy and the loss are unchanged", bias)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.pairs_seen = checkpoint.get("rmlab_pairs_seen", 0)  # resume: keep counting
        self.skipped_nonfinite = checkpoint.get("rmlab_skipped_nonfinite", 0)

    def _rewards(self, pooled: torch.Tensor, heads: bool) -> torch.Tensor:
        out = self.head(pooled).float()
        return out if heads else out[:, 0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, heads: bool = False) -> torch.Tensor:
        """One reward per row ([N]); heads=True: every head's output ([N, heads]), the reward first."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_position_ids:
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state
        return self._rewards(self.pooling(hidden, attention_mask), heads)

    def packed_rewards(self, input_ids: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor,
                       heads: bool = False) -> torch.Tensor:
        """Rewards of SharedPromptCollator rows (one row per pair, the prompt computed once):
        [chosen rewards, rejected rewards], as forward() gives for the unpacked rows."""
        if not (self._causal and self._accepts_position_ids):
            raise ConfigError(f"data.packing=shared_prompt needs a causal decoder that takes position ids; "
                              f"{type(self.backbone).__name__} is not one (its prompt tokens would see the replies). "
                              "Use data.packing=none")
        mask = packed_attention(segments)
        attention = getattr(self.backbone.config, "_attn_implementation", "sdpa")
        if attention == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        elif attention != "sdpa":
            raise ConfigError(f"data.packing=shared_prompt builds its own attention mask, which "
                              f"attn_implementation={attention!r} cannot take; use sdpa or eager, or data.packing=none")
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
        sides = sequence_masks(segments)  # [2B, L]: chosen sequences, then rejected ones
        half = len(input_ids)
        pooled = torch.cat([self.pooling(hidden, sides[:half]), self.pooling(hidden, sides[half:])])
        return self._rewards(pooled, heads)

    def _split_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, heads: bool = False) -> torch.Tensor:
        """forward() over a padded batch, as two forwards when that cuts padding (model.split_by_length):
        the rows sorted by length and cut where the two parts, each padded to its own longest, hold the
        fewest positions. The shorter side of every pair then stops being padded to its longer side."""
        lengths = attention_mask.sum(dim=1)
        k = split_point(lengths) if self.split_by_length else None
        if k is None:
            self.positions_computed = attention_mask.numel()
            return self(input_ids, attention_mask, heads)
        order = torch.argsort(lengths)
        parts, self.positions_computed = [], 0
        for rows in (order[:k], order[k:]):
            mask = attention_mask[rows]
            columns = mask.any(dim=0).nonzero().flatten()  # the span of real tokens, for either padding side
            start, end = int(columns[0]), int(columns[-1]) + 1
            parts.append(self(input_ids[rows, start:end], mask[:, start:end], heads))
            self.positions_computed += len(rows) * (end - start)
        return torch.cat(parts)[torch.argsort(order)]

    def _pair_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if "segments" in batch:
            outputs = self.packed_rewards(batch["input_ids"], batch["segments"], batch["position_ids"], heads=True)
            self.positions_computed = batch["input_ids"].numel()
        else:
            outputs = self._split_forward(batch["input_ids"], batch["attention_mask"], heads=True)
        chosen, rejected = outputs.chunk(2)  # [B, heads] each
        extras = {"weight": batch.get("weight"), "response_tokens": batch.get("response_tokens")}
        if outputs.shape[1] > 1:  # a multi-head loss (OdinLoss) reads every head, and the heads' weights
            loss = self.loss_fn(chosen, rejected, batch.get("margin"), head_weight=self.head.weight, **extras)
        else:
            loss = self.loss_fn(chosen[:, 0], rejected[:, 0], batch.get("margin"), **extras)
        return loss, chosen[:, 0], rejected[:, 0]

    def _pair_names(self, split: str, index: torch.Tensor | None, rows: list[int]) -> list[str]:
        """Batch rows as the user can find them: the data's `origin` (file and line) where the split
        has that column, with the row id in the split."""
        if index is None:
            return [f"batch row {row}" for row in rows]
        ids = [int(index[row]) for row in rows]
        dataset = getattr(getattr(self.trainer, "datamodule", None), "splits", {}).get(split)
        if dataset is None or "origin" not in dataset.column_names:
            return [f"{split} row {i}" for i in ids]
        origins = dataset.select_columns(["origin"])[ids]["origin"]
        return [f"{origin} ({split} row {i})" for origin, i in zip(origins, ids)]

    def _nonfinite(self, split: str, batch: dict, batch_idx: int, loss: torch.Tensor,
                   reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> str | None:
        """None when the loss and every reward are finite on every rank; else what went wrong where
        (model.on_nonfinite=stop: raised as NonFiniteError)."""
        # A pair is at fault when its rewards, or what the loss reads of it (margin, weight), are not finite.
        logits = reward_chosen - reward_rejected - (batch["margin"] if batch.get("margin") is not None else 0)
        if batch.get("weight") is not None:
            logits = logits * batch["weight"]
        rows_finite = torch.isfinite(reward_chosen) & torch.isfinite(reward_rejected) & torch.isfinite(logits)
        bad_here = not bool(rows_finite.all() & torch.isfinite(loss))
        # Every rank must take the same branch: one rank skipping its backward (or raising) while
        # the others go on would leave them waiting for it in the gradient all-reduce.
        if not self.trainer.strategy.reduce_boolean_decision(bad_here, all=False):
            return None
        where = f"at global step {self.global_step}, epoch {self.current_epoch}, {split} batch {batch_idx}"
        if not bad_here:
            message = f"non-finite loss or reward on another rank {where}"
        else:
            rows = (~rows_finite).nonzero().flatten().tolist()
            names = self._pair_names(split, batch.get("index"), rows[:5])
            pairs = "; ".join(names) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")
            culprits = f"pairs: {pairs}" if rows else f"every pair's rewards are finite ({len(rows_finite)} in the batch)"
            message = f"non-finite loss ({float(loss.detach()):.4g}) or reward {where}; {culprits}"
        if self.on_nonfinite == "stop":
            raise NonFiniteError(f"{message}. Lower model.optimizer.lr, check those pairs, or set "
                                 "model.on_nonfinite=skip to skip such batches")
        return message

    def setup(self, stage: str) -> None:
        if self.on_nonfinite == "skip" and "deepspeed" in type(self.trainer.strategy).__name__.lower():
            raise ConfigError("model.on_nonfinite=skip cannot drop an update under DeepSpeed (its engine steps "
                              "from its own gradient buffers); use model.on_nonfinite=stop")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, reward_chosen, reward_rejected = self._pair_step(batch)
        n_pairs = reward_chosen.numel()
        self.pairs_seen += n_pairs * self.trainer.world_size
        problem = self._nonfinite("train", batch, batch_idx, loss, reward_chosen, reward_rejected)
        if problem:
            # Not Lightning's skip (returning None): it refuses that under DDP. The backward still
            # runs on every rank (so DDP's gradient all-reduce is matched), and
            # on_before_optimizer_step then drops the gradients, so the optimizer changes nothing.
            self._drop_update = True
            log.warning("%s: skipping this update (model.on_nonfinite=skip)", problem)
            return loss
        margin = reward_chosen - reward_rejected
        self.log_dict(
            {"train/loss": loss, "train/acc": pair_correct(margin).mean(), "train/margin": margin.mean()},
            prog_bar=True, batch_size=n_pairs,
        )
        self.log("train/pairs_seen", float(self.pairs_seen), batch_size=n_pairs)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=n_pairs)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:
            # Parameters without a gradient are left alone by the optimizer (no step, no weight
            # decay, no moment update); with gradient accumulation the whole accumulated update goes.
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False
            self.skipped_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite))

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, reward_chosen, reward_rejected = self._pair_step(batch)
        problem = self._nonfinite(stage, batch, batch_idx, loss, reward_chosen, reward_rejected)
        if problem:  # evaluation updates nothing: the pairs are scored anyway, and the metrics show it
            log.warning("%s (model.on_nonfinite=skip: kept in this epoch's %s metrics)", problem, stage)
        index = batch.get("index")
        if index is None:  # a DataModule without row ids: rows numbered per rank, never merged
            seen = sum(len(i) for i, _ in self._eval_pairs[stage])
            index = torch.arange(seen, seen + len(reward_chosen)) + self.global_rank * 2**40
        margin = batch.get("margin")
        self._eval_has_margin = margin is not None
        values = torch.stack([reward_chosen, reward_rejected, margin if margin is not None else torch.zeros_like(reward_chosen)], 1)
        self._eval_pairs[stage].append((index.detach(), values.detach()))  # read through eval_rewards()

    def eval_rewards(self, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, [reward_chosen, reward_rejected, data margin]) of every pair of the split scored in
        this epoch, from all ranks, each pair once, sorted by index. Collective under DDP: every rank
        calls it (the module at epoch end; callbacks such as BiasDiagnostics before that)."""
        if self._eval_gathered[stage] is None:
            pairs = self._eval_pairs[stage]
            index = torch.cat([i for i, _ in pairs]) if pairs else torch.zeros(0, dtype=torch.long)
            values = torch.cat([v for _, v in pairs]) if pairs else torch.zeros(0, 3)
            self._eval_gathered[stage] = gather_unique(self, index, values)
        return self._eval_gathered[stage]

    def _eval_epoch_start(self, stage: str) -> None:
        self._eval_pairs[stage], self._eval_gathered[stage] = [], None

    def _eval_epoch_end(self, stage: str) -> None:
        # Computed once over the whole split (not averaged per batch or per rank): exact under DDP.
        _, values = self.eval_rewards(stage)
        if len(values) == 0:
            return
        reward_chosen, reward_rejected = values[:, 0], values[:, 1]
        loss = self.loss_fn(reward_chosen, reward_rejected, values[:, 2] if self._eval_has_margin else None)
        metrics = pair_metrics(stage, reward_chosen, reward_rejected, loss)
        acc_key = f"{stage}/acc"
        self.log(acc_key, metrics.pop(acc_key), prog_bar=True)
        self.log_dict(metrics)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def on_validation_epoch_start(self):
        self._eval_epoch_start("val")

    def on_test_epoch_start(self):
        self._eval_epoch_start("test")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def _plain_strategy(self) -> bool:
        """Single device or DDP: every rank holds whole gradients, so torch can clip them directly."""
        return isinstance(self.trainer.strategy, (SingleDeviceStrategy, DDPStrategy))

    def configure_optimizers(self):
        # No weight decay on biases and norm weights (the usual transformer recipe).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        factory = self.optimizer_factory
        if getattr(factory, "keywords", {}).get("fused") and not self._plain_strategy():
            # FSDP / DeepSpeed own the gradients (sharded) and their clipping: the per-tensor loop there.
            factory = functools.partial(factory, fused=False)
        optimizer = factory(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(
            optimizer=optimizer, num_warmup_steps=int(self.hparams.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """trainer.gradient_clip_val with a fused optimizer (model.optimizer.fused=true, ~5x faster
        AdamW steps on CPU). Lightning refuses that pair under any mixed precision, for fp16's sake
        (a fused step unscales its gradients itself); so the gradients are unscaled here first
        where a scaler is in use, then clipped as Lightning would."""
        if not gradient_clip_val or not optimizer.defaults.get("fused") or not self._plain_strategy():
            return self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
