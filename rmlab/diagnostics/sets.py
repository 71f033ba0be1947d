"""Metrics of a reward model on sets of responses to one prompt, against gold scores.

Every function takes per-set sequences: `rewards[s]`, `gold[s]` (and `lengths[s]`) are the K_s
values of set s, in the same response order; higher gold is better, equal gold is a tie. Sets may
differ in size. Used for best-of-K evaluation (RewardBench 2 style) and the best-of-N audit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

Sets = Sequence[Sequence[float]]


def top_credit(rewards: Sequence[float], gold: Sequence[float]) -> float:
    """Share of the reward model's top pick that is gold-best: 1 when its unique top response has the
    highest gold score, 1/k when it ties k responses at the top and one of them is gold-best (RewardBench 2's
    rule), 0 when its top pick is not gold-best."""
    rewards, gold = np.asarray(rewards, dtype=float), np.asarray(gold, dtype=float)
    top = rewards == rewards.max()
    return float((gold[top] == gold.max()).sum() / top.sum())


def picked_gold(rewards: Sequence[float], gold: Sequence[float]) -> float:
    """Expected gold score of the response the model picks (the mean over a tie at the top)."""
    rewards, gold = np.asarray(rewards, dtype=float), np.asarray(gold, dtype=float)
    return float(gold[rewards == rewards.max()].mean())


def set_metrics(rewards: Sets, gold: Sets) -> dict[str, float]:
    """Over sets: `best_of_k_acc` (mean top_credit), per-set `kendall_tau` and `spearman` with the gold
    scores (scipy.stats; averaged over sets where both vary, NaN if none), `regret` (mean of gold-best
    minus picked_gold) and `sets`."""
    taus, rhos = [], []
    for r, g in zip(rewards, gold):
        if len(set(r)) > 1 and len(set(g)) > 1:
            taus.append(stats.kendalltau(r, g).statistic)
            rhos.append(stats.spearmanr(r, g).statistic)
    return {
        "sets": len(rewards),
        "best_of_k_acc": float(np.mean([top_credit(r, g) for r, g in zip(rewards, gold)])),
        "kendall_tau": float(np.mean(taus)) if taus else math.nan,
        "spearman": float(np.mean(rhos)) if rhos else math.nan,
        "regret": float(np.mean([max(g) - picked_gold(r, g) for r, g in zip(rewards, gold)])),
    }


def random_baseline(gold: Sets) -> dict[str, float]:
    """What a uniformly random pick scores in expectation: best_of_k_acc = share of gold-best responses,
    regret = gold-best minus the mean gold."""
    return {
        "sets": len(gold),
        "best_of_k_acc": float(np.mean([(np.asarray(g) == max(g)).mean() for g in gold])),
        "regret": float(np.mean([max(g) - float(np.mean(g)) for g in gold])),
    }


def longest_pick_rates(rewards: Sets, gold: Sets, lengths: Sets) -> dict[str, float]:
    """Length bias within sets: how often the model's top pick is a longest response (`rm_top_longest`,
    credit shared over a tie at the top) against how often a gold-best response is (`gold_top_longest`)."""
    rm, reference = [], []
    for r, g, n in zip(rewards, gold, lengths):
        longest = (np.asarray(n) == max(n)).astype(float)  # as a "gold" score: 1 for a longest response
        rm.append(top_credit(r, longest))
        reference.append(top_credit(g, longest))
    return {"rm_top_longest": float(np.mean(rm)), "gold_top_longest": float(np.mean(reference))}


# -- best-of-N: the expected gold score of the proxy's pick among N responses drawn from a set ------------

def best_of_n(proxy: Sequence[float], gold: Sequence[float], n: int) -> float:
    """Exact expected gold score of the highest-proxy response among n drawn without replacement,
    uniformly, from the set (ties in the proxy broken at random): with the set sorted by proxy,
    the response ranked i-th (from 1) is the pick with probability C(K - i, n - 1) / C(K, n).
    A proxy tie group shares its members' mean gold, which is the expectation over the tie-breaks.

    Raises ValueError unless 1 <= n <= K.
    """
    size = len(proxy)
    if not 1 <= n <= size:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {size}, the set's size")
    proxy, gold = np.asarray(proxy, dtype=float), np.asarray(gold, dtype=float)
    order = np.argsort(-proxy, kind="stable")
    sorted_proxy, sorted_gold = proxy[order], gold[order].copy()
    for value in np.unique(sorted_proxy):
        tied = sorted_proxy == value
        sorted_gold[tied] = sorted_gold[tied].mean()
    weights = np.array([math.comb(size - i, n - 1) for i in range(1, size + 1)], dtype=float) / math.comb(size, n)
    return float(weights @ sorted_gold)


def best_of_n_kl(n: int) -> float:
    """The KL divergence of best-of-n sampling from the base policy, log n - (n - 1) / n (nats), the
    x axis of Gao et al. (2023), "Scaling laws for reward model overoptimization", arXiv 2210.10760."""
    return math.log(n) - (n - 1) / n


def fit_bon_scaling(kl: Sequence[float], gain: Sequence[float]) -> tuple[float, float]:
    """Least-squares (alpha, beta) of Gao et al.'s best-of-n form gain = d (alpha - beta d), d = sqrt(KL):
    `gain` is the gold score at each KL minus the gold score at KL 0 (n = 1). Gao, Schulman & Hilton
    (2023), "Scaling laws for reward model overoptimization", arXiv 2210.10760, Eq. 1 (R_bon).
    beta > 0 means the curve turns down; its peak is at d = alpha / (2 beta)."""
    d = np.sqrt(np.asarray(kl, dtype=float))
    design = np.stack([d, -d**2], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(design, np.asarray(gain, dtype=float), rcond=None)
    return float(alpha), float(beta)
