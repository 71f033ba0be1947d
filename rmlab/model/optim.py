"""The optimizer and scheduler of a RewardModel, and gradient clipping with a fused optimizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy


def plain_strategy(trainer: L.Trainer) -> bool:
    """Single device or DDP: every rank holds whole gradients, so torch can clip them directly."""
    return isinstance(trainer.strategy, (SingleDeviceStrategy, DDPStrategy))


def configure_optimizers(module: L.LightningModule, optimizer_factory: Callable[..., torch.optim.Optimizer],
                         scheduler_factory: Callable[..., Any] | None, weight_decay: float, warmup_ratio: float):
    """What LightningModule.configure_optimizers returns: the optimizer (no weight decay on biases
    and norm weights, the usual transformer recipe) and, with a scheduler, its per-step schedule
    with `warmup_ratio` of the run's steps as warm-up."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    factory = optimizer_factory
    if getattr(factory, "keywords", {}).get("fused") and not plain_strategy(module.trainer):
        # FSDP / DeepSpeed own the gradients (sharded) and their clipping: the per-tensor loop there.
        factory = functools.partial(factory, fused=False)
    optimizer = factory([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}])
    if scheduler_factory is None:
        return optimizer
    total = int(module.trainer.estimated_stepping_batches)
    scheduler = scheduler_factory(optimizer=optimizer, num_warmup_steps=int(warmup_ratio * total), num_training_steps=total)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def clip_gradients(module: L.LightningModule, optimizer: torch.optim.Optimizer, gradient_clip_val=None,
                   gradient_clip_algorithm=None) -> None:
    """trainer.gradient_clip_val with a fused optimizer (model.optimizer.fused=true, ~5x faster
    AdamW steps on CPU). Lightning refuses that pair under any mixed precision, for fp16's sake
    (a fused step unscales its gradients itself); so the gradients are unscaled here first
    where a scaler is in use, then clipped as Lightning would. Otherwise Lightning clips."""
    if not gradient_clip_val or not optimizer.defaults.get("fused") or not plain_strategy(module.trainer):
        return module.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
    scaler = getattr(module.trainer.precision_plugin, "scaler", None)
    if scaler is not None:
        scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if gradient_clip_algorithm == "value":
        torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
