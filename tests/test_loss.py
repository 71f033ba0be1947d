"""Bradley-Terry loss against values computed by hand."""

import math

import pytest
import torch

from rmlab.model.loss import BradleyTerryLoss

CHOSEN = torch.tensor([2.0, 0.0])
REJECTED = torch.tensor([0.0, 1.0])
# -log sigmoid(d) = log(1 + e^-d): d = 2 -> 0.126928, d = -1 -> 1.313262, d = 1 -> 0.313262


def test_plain_loss():
    assert BradleyTerryLoss()(CHOSEN, REJECTED).item() == pytest.approx((0.126928 + 1.313262) / 2, abs=1e-6)


def test_margin_is_subtracted_from_the_reward_difference():
    loss = BradleyTerryLoss()(CHOSEN, REJECTED, label_margin=torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx((0.313262 + 1.313262) / 2, abs=1e-6)


def test_reward_centering_adds_coef_times_mean_squared_sum():
    # (2 + 0)^2 = 4, (0 + 1)^2 = 1 -> mean 2.5 -> 0.01 * 2.5 = 0.025
    loss = BradleyTerryLoss(center_rewards_coef=0.01)(CHOSEN, REJECTED)
    assert loss.item() == pytest.approx(0.720095 + 0.025, abs=1e-6)


def test_label_smoothing_mixes_in_the_flipped_label():
    # d = 2: 0.9 * 0.126928 + 0.1 * 2.126928 = 0.326928; d = -1: 0.9 * 1.313262 + 0.1 * 0.313262 = 1.213262
    loss = BradleyTerryLoss(label_smoothing=0.1)(CHOSEN, REJECTED)
    assert loss.item() == pytest.approx((0.326928 + 1.213262) / 2, abs=1e-6)


def test_extreme_margins_stay_finite_with_exact_gradients():
    chosen = torch.tensor([1000.0, -1000.0], requires_grad=True)
    loss = BradleyTerryLoss()(chosen, torch.zeros(2))
    assert loss.item() == pytest.approx(500.0)  # (0 + 1000) / 2, where log(sigmoid(x) + eps) would give ~9.2
    loss.backward()
    assert chosen.grad.tolist() == pytest.approx([0.0, -0.5])


def test_zero_margin_is_log_two():
    assert BradleyTerryLoss()(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_label_smoothing_out_of_range_is_refused():
    with pytest.raises(ValueError, match="label_smoothing"):
        BradleyTerryLoss(label_smoothing=0.5)
