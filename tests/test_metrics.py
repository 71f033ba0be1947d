"""Validation/test metrics on hand-made rewards, computed once over a whole split."""

import math
from types import SimpleNamespace

import pytest
import torch

from rmlab.model.eval_store import gather_unique
from rmlab.model.module import pair_metrics


def test_pair_metrics_over_a_split_with_ties_as_half():
    # margins: 1, 0 (tie), -2
    values = pair_metrics("val", torch.tensor([2.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 3.0]), loss=torch.tensor(0.7))
    assert values == pytest.approx({
        "val/acc": (1 + 0.5 + 0) / 3,
        "val/loss": 0.7,
        "val/margin": -1 / 3,
        "val/reward_chosen_mean": 1.0,
        "val/reward_chosen_std": math.sqrt(5 / 3 - 1),
        "val/reward_rejected_mean": 4 / 3,
        "val/reward_rejected_std": math.sqrt(10 / 3 - 16 / 9),
    }, abs=1e-6)


def test_gather_unique_counts_a_padded_duplicate_once_and_sorts_by_index():
    # One process: what a DistributedSampler's padding looks like (row 0 repeated at the end).
    module = SimpleNamespace(trainer=SimpleNamespace(world_size=1))
    index, values = gather_unique(module, torch.tensor([2, 0, 1, 0]), torch.tensor([[2.0], [0.0], [1.0], [0.0]]))
    assert index.tolist() == [0, 1, 2]
    assert values[:, 0].tolist() == [0.0, 1.0, 2.0]
