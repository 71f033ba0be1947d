"""The per-pair rewards of one validation or test epoch, gathered from every rank: what the module's
epoch metrics and BiasDiagnostics both read."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch


def gather_unique(module: L.LightningModule, index: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's (index [N], values [N, ...]) rows on every rank, each index once, sorted by index (on CPU).

    A DistributedSampler pads the last shard with repeats of the first rows so that every rank gets
    as many batches; their index is seen twice and is kept once, so a split is counted exactly.
    Collective under DDP: every rank calls it.
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


@dataclass(frozen=True)
class ScoredPairs:
    """Every scored pair of a split, each once, sorted by `index`; all [N] on CPU, float32 rewards."""

    index: torch.Tensor            # [N] int64: the pair's row in its split
    reward_chosen: torch.Tensor    # [N]
    reward_rejected: torch.Tensor  # [N]
    label_margin: torch.Tensor | None  # [N]: the data's margin, None when the data has none

    def __len__(self) -> int:
        return len(self.index)


class EvalRewardStore:
    """Collects (index, rewards, label margin) batch by batch for "val" and "test", and gathers them
    once per epoch. `add` on every eval step, `reset` at epoch start, `gathered` at epoch end (and
    before that by callbacks: the first call gathers, later ones reuse it)."""

    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self._gathered: dict[str, ScoredPairs | None] = {"val": None, "test": None}
        self._has_label_margin = False

    def reset(self, stage: str) -> None:
        self._parts[stage], self._gathered[stage] = [], None

    def seen(self, stage: str) -> int:
        """Pairs added on this rank in this epoch."""
        return sum(len(index) for index, _ in self._parts[stage])

    def add(self, stage: str, index: torch.Tensor, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
            label_margin: torch.Tensor | None) -> None:
        """One batch: index, rewards and label margin all [B]."""
        self._has_label_margin = label_margin is not None
        margin = label_margin if label_margin is not None else torch.zeros_like(reward_chosen)
        values = torch.stack([reward_chosen, reward_rejected, margin], 1)  # [B, 3]
        self._parts[stage].append((index.detach(), values.detach()))

    def gathered(self, stage: str, module: L.LightningModule) -> ScoredPairs:
        """The split's pairs from all ranks (collective under DDP: every rank calls it)."""
        if self._gathered[stage] is None:
            parts = self._parts[stage]
            index = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
            values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0, 3)
            index, values = gather_unique(module, index, values)
            self._gathered[stage] = ScoredPairs(index, values[:, 0], values[:, 1],
                                                values[:, 2] if self._has_label_margin else None)
        return self._gathered[stage]


@dataclass(frozen=True)
class ScoredSets:
    """Every scored response set of a split, each once, sorted by `index`; on CPU, padded to the widest set W."""

    index: torch.Tensor     # [N] int64: the set's row in its split
    rewards: torch.Tensor   # [N, W] float32 (0 where absent)
    scores: torch.Tensor    # [N, W] float32: the gold scores (0 where absent)
    mask: torch.Tensor      # [N, W] bool: True where set n has a response k

    def __len__(self) -> int:
        return len(self.index)


class EvalSetStore:
    """EvalRewardStore for response sets: (index [B], rewards, scores, mask [B, K]) batch by batch,
    gathered once per epoch from every rank (batches of different K are padded to the widest)."""

    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}
        self._gathered: dict[str, ScoredSets | None] = {"val": None, "test": None}

    def reset(self, stage: str) -> None:
        self._parts[stage], self._gathered[stage] = [], None

    def seen(self, stage: str) -> int:
        """Sets added on this rank in this epoch."""
        return sum(len(index) for index, _ in self._parts[stage])

    def add(self, stage: str, index: torch.Tensor, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> None:
        """One batch: index [B]; rewards, scores, mask [B, K]."""
        values = torch.stack([rewards.detach().float(), scores.float(), mask.float()], 1)  # [B, 3, K]
        self._parts[stage].append((index.detach(), values))

    def gathered(self, stage: str, module: L.LightningModule) -> ScoredSets:
        """The split's sets from all ranks (collective under DDP: every rank calls it)."""
        if self._gathered[stage] is None:
            parts = self._parts[stage]
            width = max((v.shape[2] for _, v in parts), default=0)
            if module.trainer.world_size > 1:
                width = int(module.all_gather(torch.tensor(width, device=module.device)).max())
            index = torch.cat([i for i, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
            values = (torch.cat([torch.nn.functional.pad(v, (0, width - v.shape[2])) for _, v in parts]) if parts
                      else torch.zeros(0, 3, width))
            index, values = gather_unique(module, index, values)
            self._gathered[stage] = ScoredSets(index, values[:, 0], values[:, 1], values[:, 2].bool())
        return self._gathered[stage]
