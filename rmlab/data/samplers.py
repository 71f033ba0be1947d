"""Which pairs each training and evaluation batch holds, in which order.

ResumableSampler (training): a seeded permutation dealt out rank by rank, grouped by length, drawn
by weight (data.balance.method=resample) or built as length-matched batches (data.length_matched),
and resumed mid-epoch. LengthSortedSampler (evaluation): longest pairs first.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.utils.data import DistributedSampler, Sampler

from rmlab.data.balance import length_matched_batches


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that starts each pass `skip()` samples in: 0 at an epoch's start, the
    samples already trained on when a run resumes mid-epoch (so it trains on the rest of that
    epoch's order, not on its start again). Asked when the pass starts, after Lightning restored the step.

    With `lengths` and `batch_size` (the global batch: per-process batch x processes) it groups by
    length: the epoch's seeded permutation is cut into windows of `window` batches, each window is
    sorted by length and cut into batches, and the batches are shuffled. A batch then holds pairs
    of similar length, so little of it is padding, while the order stays random at batch level
    (the idea of Hugging Face's LengthGroupedSampler, here per global batch so that every rank
    gets a share of the same batch).
    """

    def __init__(self, *args, skip: Callable[[], int] = lambda: 0, lengths: list[int] | None = None,
                 batch_size: int = 1, window: int = 64, weights: torch.Tensor | None = None,
                 length_gaps: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip, self.lengths, self.global_batch, self.window = skip, lengths, batch_size, window
        self.weights, self.length_gaps = weights, length_gaps

    def _order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.dataset)
        if self.length_gaps is not None:  # data.length_matched: balanced batches, built whole
            batches = length_matched_batches(self.length_gaps, self.global_batch, generator, ranks=self.num_replicas)
            order = [i for batch in batches for i in batch]
        elif self.weights is not None:  # data.balance.method=resample: n draws in proportion to the weights
            order = torch.multinomial(self.weights, n, replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))
        if self.lengths is not None and self.length_gaps is None:
            span = self.global_batch * self.window
            windows = [sorted(order[i:i + span], key=lambda j: -self.lengths[j]) for i in range(0, n, span)]
            flat = [j for w in windows for j in w]
            batches = [flat[i:i + self.global_batch] for i in range(0, n, self.global_batch)]
            # A short last batch stays last: in the middle it would shift every later batch's boundary.
            tail = [batches.pop()] if len(batches[-1]) < self.global_batch else []
            shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            order = [j for b in shuffled + tail for j in b]
        if len(order) < self.total_size:  # as DistributedSampler: repeat the start so every rank gets as many
            order += (order * math.ceil(self.total_size / len(order)))[:self.total_size - len(order)]
        return order[:self.total_size]

    def __iter__(self):
        mine = self._order()[self.rank:self.total_size:self.num_replicas]
        return iter(mine[self.skip():])


class LengthSortedSampler(Sampler):
    """Evaluation order: longest pairs first (little padding per batch; an out-of-memory shows on the
    first batch). Rewards are matched back to pairs by their index, so the order changes nothing else."""

    def __init__(self, lengths: list[int]):
        self.order = sorted(range(len(lengths)), key=lambda i: -lengths[i])

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)
