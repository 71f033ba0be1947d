"""Set metrics and the exact best-of-N estimator on hand data with known answers."""

import itertools
import math
import random

import pytest

from rmlab.diagnostics.sets import best_of_n, best_of_n_kl, longest_pick_rates, picked_gold, random_baseline, set_metrics, top_credit


def test_top_credit_follows_rewardbench2_ties():
    assert top_credit([3, 1, 2, 0], [1, 0, 0, 0]) == 1.0
    assert top_credit([3, 1, 3, 0], [1, 0, 0, 0]) == 0.5  # a 2-way tie at the top, one of them correct
    assert top_credit([1, 3, 2, 0], [1, 0, 0, 0]) == 0.0
    assert top_credit([2, 2, 2, 2], [1, 0, 0, 0]) == 0.25


def test_set_metrics_by_hand():
    rewards = [[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]
    gold = [[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]]  # the first set ranked right, the second reversed
    out = set_metrics(rewards, gold)
    assert out == {"sets": 2, "best_of_k_acc": 0.5, "kendall_tau": pytest.approx(0.0), "spearman": pytest.approx(0.0),
                   "regret": pytest.approx((0.0 + 0.8) / 2)}
    assert picked_gold([1, 3, 3], [0.2, 0.4, 0.8]) == pytest.approx(0.6)
    assert random_baseline(gold) == {"sets": 2, "best_of_k_acc": pytest.approx(1 / 3), "regret": pytest.approx(0.9 - 0.5)}


def test_longest_pick_rates_by_hand():
    rewards, gold, lengths = [[3, 1, 2], [1, 2, 0]], [[1, 0, 0], [1, 0, 0]], [[10, 50, 20], [80, 5, 80]]
    # set 1: the model picks response 0 (not longest), gold-best 0 (not longest);
    # set 2: the model picks 1 (not longest), gold-best 0 (one of the two longest)
    assert longest_pick_rates(rewards, gold, lengths) == {"rm_top_longest": 0.0, "gold_top_longest": 0.5}


def brute_force(proxy, gold, n):
    """Mean over every n-subset of the gold of its highest-proxy response (a tie: the tied ones' mean gold)."""
    values = []
    for subset in itertools.combinations(range(len(proxy)), n):
        top = max(proxy[i] for i in subset)
        tied = [gold[i] for i in subset if proxy[i] == top]
        values.append(sum(tied) / len(tied))
    return sum(values) / len(values)


@pytest.mark.parametrize("seed", range(20))
def test_best_of_n_is_the_exact_mean_over_all_subsets(seed):
    rng = random.Random(seed)
    size = rng.randint(1, 8)
    proxy = [rng.choice([0.0, 0.5, 1.0, 1.5, rng.random()]) for _ in range(size)]  # ties on purpose
    gold = [rng.random() for _ in range(size)]
    for n in range(1, size + 1):
        assert best_of_n(proxy, gold, n) == pytest.approx(brute_force(proxy, gold, n), abs=1e-12)


def test_best_of_n_ends_and_bounds():
    gold = [0.1, 0.7, 0.4, 0.9]
    assert best_of_n(gold, gold, 1) == pytest.approx(sum(gold) / 4)  # N = 1: a random response
    assert best_of_n(gold, gold, 4) == pytest.approx(0.9)  # a gold-equal proxy at N = K: the best
    assert best_of_n([-g for g in gold], gold, 4) == pytest.approx(0.1)  # an inverted proxy: the worst
    with pytest.raises(ValueError, match="best-of-5 needs 1 <= n <= 4"):
        best_of_n(gold, gold, 5)


def test_best_of_n_kl():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)


def test_the_bon_scaling_fit_recovers_its_coefficients():
    from rmlab.diagnostics.sets import fit_bon_scaling

    kl = [best_of_n_kl(n) for n in (1, 2, 4, 8, 16, 32)]
    gain = [math.sqrt(k) * (0.8 - 0.3 * math.sqrt(k)) for k in kl]
    assert fit_bon_scaling(kl, gain) == (pytest.approx(0.8), pytest.approx(0.3))


def test_ensemble_aggregations_by_hand():
    import torch

    from rmlab.model.ensemble import aggregate

    rewards = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 3.0]])  # 3 members, 2 responses
    assert aggregate(rewards, "mean").tolist() == [2.0, 1.0]
    assert aggregate(rewards, "min").tolist() == [1.0, 0.0]
    std = math.sqrt(2 / 3)  # of (1, 3, 2); of (0, 0, 3): sqrt(2)
    assert aggregate(rewards, "uncertainty_weighted", 0.5).tolist() == pytest.approx([2.0 - 0.5 * std, 1.0 - 0.5 * math.sqrt(2)])
    with pytest.raises(ValueError, match="choose one of"):
        aggregate(rewards, "median")
