"""Losses over K responses per prompt, against hand-computed values; a pair is the set K = 2."""

import math

import pytest
import torch

from rmlab.model.loss import AllPairsBradleyTerryLoss, BradleyTerryLoss, DavidsonTiesLoss, PlackettLuceLoss, set_pair_counts

# One set of three: response 0 is best, then 2, then 1 (scores), and the rewards agree.
REWARDS, SCORES, FULL = torch.tensor([[2.0, 0.0, 1.0]]), torch.tensor([[3.0, 1.0, 2.0]]), torch.ones(1, 3, dtype=torch.bool)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_all_pairs_bradley_terry_by_hand():
    # pairs (0 > 1, d = 2), (0 > 2, d = 1), (2 > 1, d = 1)
    expected = (softplus(-2) + 2 * softplus(-1)) / 3
    assert AllPairsBradleyTerryLoss()(REWARDS, SCORES, FULL).item() == pytest.approx(expected, abs=1e-6)
    # margin = 0.5 x score difference: d - 1, d - 0.5, d - 0.5
    expected = (softplus(-(2 - 1)) + 2 * softplus(-(1 - 0.5))) / 3
    assert AllPairsBradleyTerryLoss(margin_scale=0.5)(REWARDS, SCORES, FULL).item() == pytest.approx(expected, abs=1e-6)


def test_plackett_luce_by_hand():
    # ranking 0, 2, 1: (2 - log(e^2 + e + 1)) + (1 - log(e + 1)) + (0 - 0)
    expected = -((2 - math.log(math.e**2 + math.e + 1)) + (1 - math.log(math.e + 1)))
    assert PlackettLuceLoss()(REWARDS, SCORES, FULL).item() == pytest.approx(expected, abs=1e-6)


def test_davidson_ties_by_hand():
    tie = DavidsonTiesLoss(tie_strength=1.0)(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert tie.item() == pytest.approx(math.log(3), abs=1e-6)  # P(tie) = 1 / (1 + 1 + 1)
    win = DavidsonTiesLoss(tie_strength=2.0)(torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool))
    assert win.item() == pytest.approx(-math.log(math.e / (math.e + 1 / math.e + 2)), abs=1e-6)
    with pytest.raises(ValueError, match="tie_strength must be > 0"):
        DavidsonTiesLoss(tie_strength=0.0)


def test_a_set_of_two_is_a_pair():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(16), torch.randn(16)
    rewards, scores, mask = torch.stack([chosen, rejected], 1), torch.tensor([[1.0, 0.0]] * 16), torch.ones(16, 2, dtype=torch.bool)
    pair = BradleyTerryLoss()(chosen, rejected)
    assert AllPairsBradleyTerryLoss()(rewards, scores, mask).item() == pytest.approx(pair.item(), abs=1e-6)
    assert PlackettLuceLoss()(rewards, scores, mask).item() == pytest.approx(pair.item(), abs=1e-6)


def test_padding_takes_no_part():
    rewards = torch.tensor([[2.0, 0.0, 5.0], [1.0, 3.0, -1.0]])
    scores = torch.tensor([[1.0, 0.0, 9.0], [2.0, 0.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    padded = {name: loss(rewards, scores, mask).item() for name, loss in
              (("bt", AllPairsBradleyTerryLoss()), ("pl", PlackettLuceLoss()), ("davidson", DavidsonTiesLoss()))}
    assert padded["bt"] == pytest.approx((softplus(-2) + softplus(2) + softplus(-2) + softplus(4)) / 4, abs=1e-6)
    first = PlackettLuceLoss()(rewards[:1, :2], scores[:1, :2], mask[:1, :2]).item()
    second = PlackettLuceLoss()(rewards[1:], scores[1:], mask[1:]).item()
    assert padded["pl"] == pytest.approx((first + second) / 2, abs=1e-6)
    assert set_pair_counts(scores, mask)[0].tolist() == [1, 3]


def test_plackett_luce_of_a_padded_batch_whose_real_scores_are_all_above_the_padding():
    # the collator scores an absent response 0; AlpacaEval's gold scores are win probabilities > 0
    rewards = torch.tensor([[0.3, 0.1, 0.0], [0.2, 0.5, 0.4]], requires_grad=True)
    scores, mask = torch.tensor([[0.9, 0.2, 0.0], [0.1, 0.7, 0.3]]), torch.tensor([[True, True, False], [True, True, True]])
    loss = PlackettLuceLoss()(rewards, scores, mask)
    lse = lambda *x: math.log(sum(math.exp(v) for v in x))  # noqa: E731
    first = (0.3 - lse(0.3, 0.1)) + 0.0                      # ranking 0, 1
    second = (0.5 - lse(0.2, 0.5, 0.4)) + (0.4 - lse(0.2, 0.4)) + 0.0  # ranking 1, 2, 0
    assert loss.item() == pytest.approx(-(first + second) / 2, abs=1e-6)
    loss.backward()
    assert torch.isfinite(rewards.grad).all() and rewards.grad[0, 2] == 0


def test_ties_are_counted_and_tied_responses_are_treated_alike():
    scores, mask = torch.tensor([[2.0, 1.0, 1.0, 0.0]]), torch.ones(1, 4, dtype=torch.bool)
    assert [t.tolist() for t in set_pair_counts(scores, mask)] == [[5], [1]]  # K(K-1)/2 = 6 in all
    rewards = torch.tensor([[1.0, 0.3, -0.4, -1.0]])
    swapped = rewards[:, [0, 2, 1, 3]]  # the tied responses' rewards exchanged
    for loss in (AllPairsBradleyTerryLoss(), PlackettLuceLoss(), DavidsonTiesLoss()):
        assert loss(rewards, scores, mask).item() == pytest.approx(loss(swapped, scores, mask).item(), abs=1e-6)
    # Davidson: the tie pulls the two rewards together.
    apart, together = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.5]])
    tie_scores, two = torch.tensor([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)
    assert DavidsonTiesLoss()(together, tie_scores, two) < DavidsonTiesLoss()(apart, tie_scores, two)
