"""Validation/test metrics on hand-made rewards."""

import math

import pytest
import torch

from rmlab.model.module import PairMetrics


def test_pair_metrics_accumulate_over_batches_with_ties_as_half():
    metrics = PairMetrics()
    # margins: 1, 0 (tie), -2
    metrics.update(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]), loss=torch.tensor(1.0))
    metrics.update(torch.tensor([1.0]), torch.tensor([3.0]), loss=torch.tensor(4.0))
    values = {k: v.item() for k, v in metrics.compute("val").items()}
    assert values == pytest.approx({
        "val/acc": (1 + 0.5 + 0) / 3,
        "val/loss": (2 * 1.0 + 1 * 4.0) / 3,  # weighted by pairs, not by batches
        "val/margin": -1 / 3,
        "val/reward_chosen_mean": 1.0,
        "val/reward_chosen_std": math.sqrt(5 / 3 - 1),
        "val/reward_rejected_mean": 4 / 3,
        "val/reward_rejected_std": math.sqrt(10 / 3 - 16 / 9),
    }, abs=1e-6)
    metrics.reset()
    metrics.update(torch.tensor([1.0]), torch.tensor([0.0]), loss=torch.tensor(0.5))
    assert metrics.compute("test")["test/acc"].item() == 1.0
