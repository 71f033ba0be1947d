"""Checkpoints written before the reward head lost its bias still load (the bias is a constant shift)."""

import logging

import torch

from conftest import make_reward_model
from rmlab.model.pooling import MeanPooling


def test_a_checkpoint_with_a_head_bias_loads_with_a_warning(backbone_cfg, caplog):
    torch.manual_seed(0)
    trained = make_reward_model(backbone_cfg, MeanPooling())
    old_state = {**trained.state_dict(), "head.bias": torch.tensor([0.7])}
    fresh = make_reward_model(backbone_cfg, MeanPooling())
    with caplog.at_level(logging.WARNING):
        fresh.load_state_dict(old_state)
    assert "reward-head bias (0.7)" in caplog.text
    input_ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids, mask), trained(input_ids, mask))
