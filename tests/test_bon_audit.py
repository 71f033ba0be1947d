"""The best-of-N audit (rmlab.diagnostics.bon): curves, their summaries and the over-rated picks."""

from __future__ import annotations

import numpy as np
import pytest

from rmlab.diagnostics.bon import bon_audit, default_max_n, n_grid, overrated


def _planted_length_sets(seed: int = 0, sets: int = 300, k: int = 16):
    """Gold uniform in [0, 1]; one response in ten is a long wrong one (gold below 0.2), and the
    planted proxy adds 3 for being long: it agrees with gold except that it loves the long ones."""
    rng = np.random.default_rng(seed)
    gold, lengths, proxy = [], [], []
    for _ in range(sets):
        long = rng.random(k) < 0.1
        g = np.where(long, rng.uniform(0, 0.2, k), rng.uniform(0, 1, k))
        n = np.where(long, 400, 100) + rng.integers(0, 50, k)
        gold.append(g.tolist()), lengths.append(n.tolist()), proxy.append((g + 3 * long).tolist())
    return proxy, gold, lengths


def test_the_grid_and_the_default_largest_n():
    assert n_grid(16) == [1, 2, 4, 8, 16]
    assert n_grid(6) == [1, 2, 4, 6]
    assert default_max_n([3, 9, 9, 20, 22]) == 8       # median 9 -> 8
    assert default_max_n([2, 2, 5]) == 2
    with pytest.raises(ValueError, match="at least 2 responses"):
        default_max_n([1])


def test_a_gold_equal_proxy_draws_the_gold_curve_exactly():
    _, gold, lengths = _planted_length_sets(sets=40, k=8)
    audit = bon_audit({"proxy": gold}, gold, lengths)
    assert audit["max_n"] == 8 and audit["ns"] == [1, 2, 4, 8] and audit["sets"] == 40
    assert audit["curves"]["proxy"] == audit["curves"]["gold"]
    assert audit["summary"]["proxy"]["gap_to_gold_at_max_n"] == 0.0
    assert audit["summary"]["gold"]["turns_down"] is False
    # random choice: every pick is the set's mean gold, at every n
    mean_gold = float(np.mean([np.mean(g) for g in gold]))
    assert audit["curves"]["random"] == pytest.approx([mean_gold] * 4, abs=1e-12)


def test_a_proxy_that_loves_length_turns_down_while_gold_keeps_rising():
    proxy, gold, lengths = _planted_length_sets()
    audit = bon_audit({"proxy": proxy}, gold, lengths)
    curve, ceiling = audit["curves"]["proxy"], audit["curves"]["gold"]
    assert audit["ns"] == [1, 2, 4, 8, 16]
    assert all(b > a for a, b in zip(ceiling, ceiling[1:]))          # the gold reward keeps rising
    summary = audit["summary"]["proxy"]
    assert summary["turns_down"] is True and 1 < summary["peak_n"] < 16
    assert curve[-1] < curve[0]                                       # at N = 16 it is worse than no selection
    assert summary["beta"] > 0                                        # Gao et al.'s fit bends down too
    assert summary["gap_to_gold_at_max_n"] == pytest.approx(ceiling[-1] - curve[-1])
    # picking the longest is the artifact alone: below random at every n > 1
    assert all(a < b for a, b in zip(audit["curves"]["longest"][1:], audit["curves"]["random"][1:]))


def test_only_sets_that_reach_max_n_are_audited_and_the_count_is_reported():
    gold = [[0.0, 1.0], [0.0, 0.5, 1.0, 0.25]]
    audit = bon_audit({"proxy": gold}, gold, [[1, 2], [1, 2, 3, 4]], max_n=4)
    assert (audit["sets"], audit["sets_too_small"]) == (1, 1)
    # sorted gold 1, 0.5, 0.25, 0: best of 2 picks rank i with weight C(4 - i, 1) / C(4, 2) = 3/6, 2/6, 1/6, 0
    assert audit["curves"]["gold"] == pytest.approx([1.75 / 4, (3 * 1.0 + 2 * 0.5 + 0.25) / 6, 1.0])
    with pytest.raises(ValueError, match="no response set has 8 responses"):
        bon_audit({"proxy": gold}, gold, [[1, 2], [1, 2, 3, 4]], max_n=8)


def test_overrated_lists_the_costliest_top_picks():
    rows = overrated([[0.9, 0.1], [0.2, 0.8, 0.5]], [[0.0, 1.0], [0.7, 0.6, 0.9]], [["a", "b"], ["c", "d", "e"]], top=2)
    assert rows == [
        {"set": 0, "response": 0, "regret": 1.0, "reward": 0.9, "gold": 0.0, "best_gold": 1.0, "text": "a"},
        {"set": 1, "response": 1, "regret": pytest.approx(0.3), "reward": 0.8, "gold": 0.6, "best_gold": 0.9, "text": "d"},
    ]
