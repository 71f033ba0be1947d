"""Training throughput, measured in every run: pairs/s, non-pad tokens/s, padding fraction, FLOP/s and MFU.

Counted over the training loop after `warmup_steps` batches (kernel selection, first allocations,
compilation), from the end of one batch to the end of the next, so data loading, the optimizer
step and logging are inside. Logged as train/pairs_per_s (response sets: train/sets_per_s and train/responses_per_s), train/tokens_per_s,
train/padding_fraction, train/flops_per_s and train/mfu (every batch: the running figure since
warm-up, all processes together) and written into summary.json by rmlab.train.

Model FLOPs (as in the PaLM paper's MFU): 6 x (matmul parameters) per real token, plus attention
scores, 12 x layers x hidden per (query, key) pair a mask lets through; padding, recomputation
(gradient checkpointing) and the prompt a packed pair shares are not counted. MFU divides the
achieved FLOP/s per device by the device's measured matmul peak in the precision in use
(rmlab.hardware.matmul_peak_flops).
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch
from torch import nn

from rmlab.data.batch import Batch, group_count, is_packed, is_set_batch, real_tokens
from rmlab.data.collate import packed_attention

log = logging.getLogger(__name__)
SET_KEYS = ("train/sets_per_s", "train/responses_per_s")  # logged instead of train/pairs_per_s for response sets
KEYS = ("train/pairs_per_s", *SET_KEYS, "train/tokens_per_s", "train/padding_fraction", "train/flops_per_s", "train/mfu")


def matmul_parameters(model: nn.Module) -> int:
    """Parameters that multiply every token's activations: 2-D weights outside embedding tables."""
    embeddings = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if p.ndim == 2 and id(p) not in embeddings)


def attended_pairs(batch: Batch, causal: bool) -> int:
    """(query, key) pairs of real tokens that attention computes for this batch."""
    if is_packed(batch):
        real = batch["segments"] >= 0
        mask = packed_attention(batch["segments"])[:, 0] & real[:, :, None]
        return int(mask.sum())
    lengths = batch["attention_mask"].sum(dim=1).double()
    return int((lengths * (lengths + 1) / 2).sum() if causal else (lengths**2).sum())


def batch_tokens(batch: Batch) -> tuple[int, int]:
    """(real tokens, positions of the padded batch) of a batch."""
    real = real_tokens(batch)
    return int(real.sum()), real.numel()


def precision_dtype(precision: str) -> str:
    """The matmul dtype a Lightning precision setting computes in."""
    precision = str(precision)
    return "bfloat16" if precision.startswith("bf16") else "float16" if precision.startswith("16") else "float32"


class Throughput(L.Callback):
    """Measures training speed after `warmup_steps` batches; see the module docstring."""

    def __init__(self, warmup_steps: int = 5):
        self.warmup_steps = warmup_steps

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from rmlab.hardware import matmul_peak_flops

        config = pl_module.backbone.config
        self.params = matmul_parameters(pl_module)
        self.layers, self.hidden = config.num_hidden_layers, config.hidden_size
        self.causal = bool(getattr(pl_module, "_causal", False))
        device = pl_module.device
        dtype = precision_dtype(trainer.precision)
        self.peak = matmul_peak_flops(str(device) if device.type == "cuda" else "cpu", dtype)
        self.batches, self.start, self.totals = 0, None, torch.zeros(5, dtype=torch.float64)
        log.info("throughput: %.3g matmul params, %s peak %.1f TFLOP/s per device; measuring after %d batches",
                 self.params, dtype, self.peak / 1e12, self.warmup_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self.batches += 1
        if self.batches <= self.warmup_steps:
            self.start = now
            return
        tokens, positions = batch_tokens(batch)
        # What the forward computed (RewardModel.training_step says: split forwards pad less), else the padded batch.
        positions = (outputs.get("positions_computed") if isinstance(outputs, dict) else None) or positions
        flops = 3 * (2 * self.params * tokens + 4 * self.layers * self.hidden * attended_pairs(batch, self.causal))
        pairs = group_count(batch)
        responses = int(batch["response_mask"].sum()) if is_set_batch(batch) else 2 * pairs
        self.totals += torch.tensor([pairs, tokens, positions, flops, responses], dtype=torch.float64)
        totals = self.totals
        if trainer.world_size > 1:  # every process's counts (a few numbers per batch)
            # A copy: all_reduce sums in place, and on the CPU .to(device) is this very tensor, so this process's
            # running totals would take in the other processes' counts again at every step.
            totals = trainer.strategy.reduce(totals.clone().to(pl_module.device), reduce_op="sum").cpu()
        seconds = now - self.start
        pairs, tokens, positions, flops, responses = totals.tolist()
        # A set batch counts sets and their responses; a pair batch, pairs.
        groups = ({"train/sets_per_s": pairs / seconds, "train/responses_per_s": responses / seconds}
                  if is_set_batch(batch) else {"train/pairs_per_s": pairs / seconds})
        metrics = {
            **groups,
            "train/tokens_per_s": tokens / seconds,
            "train/padding_fraction": 1 - tokens / positions,
            "train/flops_per_s": flops / seconds,
            "train/mfu": flops / seconds / (self.peak * trainer.world_size),
        }
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, batch_size=1)
