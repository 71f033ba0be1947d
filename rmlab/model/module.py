"""The reward model as a LightningModule: backbone -> pooling -> Linear(hidden, 1) -> pairwise loss."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from rmlab.model.backbone import load_backbone


def pair_correct(margin: torch.Tensor) -> torch.Tensor:
    """1 where chosen outscores rejected, 0.5 on a tie (a constant scorer gets exactly chance)."""
    return (margin > 0).float() + 0.5 * (margin == 0).float()


class PairMetrics(nn.Module):
    """Running, DDP-synced means over a split: accuracy, loss, margin, reward moments."""

    names = ("acc", "loss", "margin", "reward_chosen", "reward_chosen_sq", "reward_rejected", "reward_rejected_sq")

    def __init__(self):
        super().__init__()
        self.means = nn.ModuleDict({name: MeanMetric() for name in self.names})

    def update(self, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, loss: torch.Tensor) -> None:
        margin = reward_chosen - reward_rejected
        n = margin.numel()
        values = {
            "acc": pair_correct(margin),
            "margin": margin,
            "reward_chosen": reward_chosen,
            "reward_chosen_sq": reward_chosen**2,
            "reward_rejected": reward_rejected,
            "reward_rejected_sq": reward_rejected**2,
        }
        for name, value in values.items():
            self.means[name].update(value)
        self.means["loss"].update(loss.detach(), weight=n)

    def compute(self, stage: str) -> dict[str, torch.Tensor]:
        m = {name: metric.compute() for name, metric in self.means.items()}
        out = {f"{stage}/{name}": m[name] for name in ("acc", "loss", "margin")}
        for side in ("chosen", "rejected"):
            mean = m[f"reward_{side}"]
            out[f"{stage}/reward_{side}_mean"] = mean
            out[f"{stage}/reward_{side}_std"] = (m[f"reward_{side}_sq"] - mean**2).clamp(min=0).sqrt()
        return out

    def reset(self) -> None:
        for metric in self.means.values():
            metric.reset()


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
    ):
        super().__init__()
        self.save_hyperparameters({"backbone": backbone, "warmup_ratio": warmup_ratio, "weight_decay": weight_decay})
        self.backbone = load_backbone(**backbone)
        self.backbone.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        if disable_dropout:
            # As in TRL's RewardTrainer default: dropout makes chosen and rejected rows of one
            # pair see different noise, which adds variance to the margin the loss reads.
            for module in self.backbone.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.pooling = pooling
        # No bias: the pairwise loss cannot see a constant offset (it cancels in the margin), and
        # without one the head is exactly the `score` layer of transformers' *ForSequenceClassification
        # decoders, so exports (rmlab.export) give the same rewards.
        self.head = nn.Linear(self.backbone.config.hidden_size, 1, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / (self.backbone.config.hidden_size + 1) ** 0.5)
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Models that build positions from arange (Llama, BERT) would shift left-padded rows.
        self._accepts_position_ids = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self.metrics = nn.ModuleDict({stage: PairMetrics() for stage in ("val", "test")})
        self.pairs_seen = 0
        self.run_config: dict | None = None  # the resolved Hydra config, set by rmlab.train

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rmlab_config"] = self.run_config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """One reward per row."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_position_ids:
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state
        return self.head(self.pooling(hidden, attention_mask)).squeeze(-1).float()

    def _pair_step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rewards = self(batch["input_ids"], batch["attention_mask"])
        reward_chosen, reward_rejected = rewards.chunk(2)
        loss = self.loss_fn(reward_chosen, reward_rejected, batch.get("margin"))
        return loss, reward_chosen, reward_rejected

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, reward_chosen, reward_rejected = self._pair_step(batch)
        n_pairs = reward_chosen.numel()
        self.pairs_seen += n_pairs * self.trainer.world_size
        margin = reward_chosen - reward_rejected
        self.log_dict(
            {"train/loss": loss, "train/acc": pair_correct(margin).mean(), "train/margin": margin.mean()},
            prog_bar=True, batch_size=n_pairs,
        )
        self.log("train/pairs_seen", float(self.pairs_seen), batch_size=n_pairs)
        return loss

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        loss, reward_chosen, reward_rejected = self._pair_step(batch)
        self.metrics[stage].update(reward_chosen, reward_rejected, loss)
        # Per-pair rewards with the row ids, for callbacks (rmlab.diagnostics.BiasDiagnostics).
        return {"index": batch.get("index"), "reward_chosen": reward_chosen.detach(), "reward_rejected": reward_rejected.detach()}

    def _eval_epoch_end(self, stage: str) -> None:
        values = self.metrics[stage].compute(stage)
        self.metrics[stage].reset()
        acc_key = f"{stage}/acc"
        self.log(acc_key, values.pop(acc_key), prog_bar=True)
        self.log_dict(values)

    def validation_step(self, batch, batch_idx):
        return self._eval_step("val", batch)

    def test_step(self, batch, batch_idx):
        return self._eval_step("test", batch)

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        # No weight decay on biases and norm weights (the usual transformer recipe).
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim < 2]
        optimizer = self.optimizer_factory(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        )
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(
            optimizer=optimizer, num_warmup_steps=int(self.hparams.warmup_ratio * total), num_training_steps=total
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
