"""Balanced training data: make a surface cue ("chosen is longer", "chosen has a list", ...) stop
predicting which response is chosen, by reweighting or resampling the training pairs.

Each pair gets a sign per cue: +1 when the chosen response has more of it (more tokens, or the
pattern where the rejected one lacks it), -1 when the rejected one has more, 0 when they are even.
`balance_weights` finds per-pair weights (raking / iterative proportional fitting, Deming & Stephan
1940) under which every cue's +1 and -1 pairs weigh the same, so no cue predicts the label any more;
pairs where the cue is even keep their weight. This is importance weighting of a biased sample, as in
Zhu et al. (2024, "Iterative data smoothing", arXiv 2401.16335) and the length-balanced subsets of
Singhal et al. (2023, "A long way to go: investigating length correlations in RLHF", arXiv 2310.03716),
done for several cues jointly: raking rescales the +1 and -1 pairs of each cue in turn,
w <- w * (W / 2) / W_sign (W the cue's total weight over its uneven pairs, W_sign that of one sign),
until every cue is balanced.

    signs = cue_signs(train, ["length", "markdown_list"])
    weights = balance_weights(signs)          # mean 1; the loss weighs pairs by them (reweight) or
                                              # the sampler draws pairs in proportion (resample)

Response sets (K responses with gold scores; a pair is the set K = 2) are balanced as a whole: a
set's sign for a cue is the sign of sum over its ordered pairs (response i scored above j) of
sign(cue_i - cue_j), i.e. +1 when its better responses mostly have more of the cue (the sign of
Kendall's tau between cue and score). Its length gap is the mean over those pairs of
log(tokens_i / tokens_j). For K = 2 both are the pair's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from datasets import Dataset

from rmlab.errors import ConfigError
from rmlab.text.patterns import PATTERNS

BALANCE_METHODS = ("none", "reweight", "resample")
CUES = ("length", *PATTERNS)


def check_cues(cues: Sequence[str]) -> list[str]:
    unknown = [c for c in cues if c not in CUES]
    if unknown:
        raise ConfigError(f"data.balance.cues: unknown {unknown}; choose from {list(CUES)}")
    if not cues:
        raise ConfigError("data.balance.cues is empty: name the cues to balance, e.g. [length]")
    return list(cues)


def cue_signs(pairs: Dataset, cues: Sequence[str]) -> torch.Tensor:
    """[pairs, cues] in {-1, 0, +1}: sign(cue of chosen - cue of rejected). Length counts the
    response tokens the model reads; a pattern counts as 1 when its detector finds it. Response sets
    (a `scores` column): per set, the sign of sum over ordered pairs of sign(cue_i - cue_j) (module doc)."""
    if "scores" in pairs.column_names:
        return _set_cue_signs(pairs, check_cues(cues))
    columns = []
    for cue in check_cues(cues):
        if cue == "length":
            chosen, rejected = pairs["chosen_response_tokens"], pairs["rejected_response_tokens"]
        else:
            found = PATTERNS[cue]
            chosen = [int(found(text)) for text in pairs["chosen"]]
            rejected = [int(found(text)) for text in pairs["rejected"]]
        columns.append(torch.sign(torch.tensor(chosen, dtype=torch.float64) - torch.tensor(rejected, dtype=torch.float64)))
    return torch.stack(columns, dim=1)


def _ordered_pairs(scores: Sequence[float]) -> list[tuple[int, int]]:
    """(i, j) for every response i of a set scored above response j."""
    return [(i, j) for i, si in enumerate(scores) for j, sj in enumerate(scores) if si > sj]


def _set_cue_signs(sets: Dataset, cues: list[str]) -> torch.Tensor:
    signs = torch.zeros(len(sets), len(cues), dtype=torch.float64)
    for b, row in enumerate(sets.select_columns(["responses", "scores", "response_tokens"])):
        pairs = _ordered_pairs(row["scores"])
        for c, cue in enumerate(cues):
            amount = row["response_tokens"] if cue == "length" else [int(PATTERNS[cue](text)) for text in row["responses"]]
            concordance = sum((amount[i] > amount[j]) - (amount[i] < amount[j]) for i, j in pairs)
            signs[b, c] = (concordance > 0) - (concordance < 0)
    return signs


def balance_weights(signs: torch.Tensor, cues: Sequence[str] | None = None, tolerance: float = 1e-9,
                    max_iterations: int = 1000) -> torch.Tensor:
    """signs [N pairs, C cues] in {-1, 0, +1} -> [N] float64 per-pair weights, mean 1,,
    under which for every cue the pairs with sign +1 weigh exactly as
    much as those with sign -1 (to `tolerance`). Raises when a cue has pairs on one side only (no
    weighting can balance that) or the cues cannot be balanced jointly."""
    names = list(cues) if cues is not None else [str(j) for j in range(signs.shape[1])]
    for j, name in enumerate(names):
        pos, neg = int((signs[:, j] > 0).sum()), int((signs[:, j] < 0).sum())
        if (pos == 0) != (neg == 0):
            side = "chosen" if pos else "rejected"
            raise ConfigError(f"data.balance: cue {name!r} is higher on the {side} side in every pair where it differs "
                              f"({pos + neg} pairs); no weighting can balance it. Drop it from data.balance.cues")
    weights = torch.ones(len(signs), dtype=torch.float64)
    for _ in range(max_iterations):
        worst = 0.0
        for j in range(signs.shape[1]):
            pos, neg = signs[:, j] > 0, signs[:, j] < 0
            mass_pos, mass_neg = float(weights[pos].sum()), float(weights[neg].sum())
            if mass_pos == 0 and mass_neg == 0:
                continue
            target = (mass_pos + mass_neg) / 2
            weights[pos] *= target / mass_pos
            weights[neg] *= target / mass_neg
        weights /= weights.mean()
        for j in range(signs.shape[1]):
            mass_pos, mass_neg = float(weights[signs[:, j] > 0].sum()), float(weights[signs[:, j] < 0].sum())
            if mass_pos + mass_neg:
                worst = max(worst, abs(mass_pos - mass_neg) / (mass_pos + mass_neg))
        if worst <= tolerance:
            return weights
    raise ConfigError(f"data.balance: the cues {names} cannot be balanced jointly (they stay {worst:.3g} off after "
                      f"{max_iterations} rounds); balance fewer cues")


def effective_pairs(weights: torch.Tensor) -> float:
    """Kish's effective sample size, (sum w)^2 / sum w^2: how many pairs the weighted set is worth."""
    return float(weights.sum() ** 2 / (weights ** 2).sum()) if len(weights) else math.nan


def chosen_longer_share(pairs: Dataset, weights: torch.Tensor | None = None) -> float:
    """Weighted share of pairs whose chosen response has more tokens (ties count half)."""
    sign = cue_signs(pairs, ["length"])[:, 0]
    w = torch.ones_like(sign) if weights is None else weights.double()
    return float(((sign > 0).double() * w + 0.5 * (sign == 0).double() * w).sum() / w.sum())


def length_gaps(pairs: Dataset) -> torch.Tensor:
    """log(chosen response tokens / rejected response tokens) per pair: > 0 when chosen is longer.
    Response sets: per set, the mean of log(tokens_i / tokens_j) over its ordered pairs (i scored above j;
    0 for a set of ties only)."""
    if "scores" in pairs.column_names:
        gaps = []
        for row in pairs.select_columns(["scores", "response_tokens"]):
            tokens = [max(t, 1) for t in row["response_tokens"]]
            logs = [math.log(tokens[i] / tokens[j]) for i, j in _ordered_pairs(row["scores"])]
            gaps.append(sum(logs) / len(logs) if logs else 0.0)
        return torch.tensor(gaps, dtype=torch.float64)
    chosen = torch.tensor(pairs["chosen_response_tokens"], dtype=torch.float64).clamp(min=1)
    rejected = torch.tensor(pairs["rejected_response_tokens"], dtype=torch.float64).clamp(min=1)
    return torch.log(chosen / rejected)


def length_matched_batches(gaps: torch.Tensor, batch_size: int, generator: torch.Generator,
                           buckets: int = 4, ranks: int = 1) -> list[list[int]]:
    """One epoch (as many pairs as `gaps` has) of batches in which half the pairs have the longer
    chosen response and half the shorter one, all from one bucket of gap size |gap| (quartiles).

    Within every batch the length gaps then cancel pair for pair, so no gradient step can lower the
    loss by rewarding length; the minority side is drawn again as often as needed (oversampling).
    Pairs of equal length carry no length signal and fill either side. The halves alternate in blocks
    of `ranks` pairs, so every DDP rank's share of a global batch (every `ranks`-th pair) is balanced too.
    Response sets are batched the same way by their mean gap (length_gaps): half the sets of a batch
    favour longer responses, half shorter ones.
    """
    n = len(gaps)
    if not (gaps > 0).any() or not (gaps < 0).any():
        raise ConfigError(f"data.length_matched: no pair has a {'shorter' if (gaps > 0).any() else 'longer'} chosen "
                          "response, so there is nothing to match the others with; use data.length_matched=false")
    magnitude = gaps.abs()
    cut = torch.quantile(magnitude[gaps != 0], torch.linspace(0, 1, buckets + 1, dtype=torch.float64)[1:-1])
    bucket = torch.bucketize(magnitude, cut).tolist()
    order = torch.randperm(n, generator=generator).tolist()
    gaps = gaps.tolist()
    groups: list[list[list[int]]] = []  # per bucket: [longer, shorter]
    carry: list[list[int]] = [[], []]
    for b in range(buckets):
        members = [i for i in order if bucket[i] == b]
        sides = [carry[0] + [i for i in members if gaps[i] > 0], carry[1] + [i for i in members if gaps[i] < 0]]
        for k, i in enumerate(i for i in members if gaps[i] == 0):
            sides[k % 2].append(i)
        if sides[0] and sides[1]:
            groups.append(sides)
            carry = [[], []]
        else:  # a bucket with one side only joins the next (the last one joins the previous)
            carry = sides
    if carry[0] or carry[1]:
        groups[-1] = [groups[-1][0] + carry[0], groups[-1][1] + carry[1]]
    sizes = torch.tensor([len(g[0]) + len(g[1]) for g in groups], dtype=torch.float64)
    cursors = [[0, 0] for _ in groups]
    batches = []
    for _ in range(math.ceil(n / batch_size)):
        g = int(torch.multinomial(sizes, 1, generator=generator))
        halves = []
        for side in (0, 1):
            pool, want = groups[g][side], (batch_size + 1 - side) // 2
            picked = []
            while len(picked) < want:
                if cursors[g][side] == len(pool):  # a side used up: a fresh order of it
                    pool[:] = [pool[int(i)] for i in torch.randperm(len(pool), generator=generator)]
                    cursors[g][side] = 0
                take = min(want - len(picked), len(pool) - cursors[g][side])
                picked += pool[cursors[g][side]:cursors[g][side] + take]
                cursors[g][side] += take
            halves.append(picked)
        blocks = [[h[i:i + ranks] for i in range(0, len(h), ranks)] for h in halves]
        batches.append([i for k in range(len(blocks[0])) for side in blocks for i in (side[k] if k < len(side) else [])])
    flat = [i for b in batches for i in b][:n]
    return [flat[i:i + batch_size] for i in range(0, n, batch_size)]
