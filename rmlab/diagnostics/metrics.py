"""Bias metrics of a reward model, computed from its rewards on held-out pairs.

Each function takes per-pair rewards (and what it needs of the pairs) and returns plain floats
and lists, so the same numbers go to W&B, report.json and the tests. Ties count half, as in
training (`pair_correct`): a scorer that cannot tell two responses apart gets exactly chance.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef
from torchmetrics.functional.classification import binary_calibration_error

from rmlab.model.module import pair_correct

NAN = float("nan")


def _mean(x: torch.Tensor) -> float:
    return float(x.double().mean()) if x.numel() else NAN


def correlation(x: torch.Tensor, y: torch.Tensor, kind: str = "pearson") -> float:
    """Pearson or Spearman correlation; NaN when either side is constant or has < 3 points."""
    x, y = x.double(), y.double()
    if x.numel() < 3 or bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return NAN
    return float((pearson_corrcoef if kind == "pearson" else spearman_corrcoef)(x, y))


def pairwise(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy, Bradley-Terry loss (no margin term, no centering), mean margin, reward moments."""
    margin = (reward_chosen - reward_rejected).double()
    return {
        "acc": _mean(pair_correct(margin)),
        "loss": _mean(F.softplus(-margin)),
        "margin": _mean(margin),
        "reward_chosen_mean": _mean(reward_chosen),
        "reward_rejected_mean": _mean(reward_rejected),
        "reward_std": float(torch.cat([reward_chosen, reward_rejected]).double().std()) if margin.numel() > 1 else NAN,
        "n": margin.numel(),
    }


def calibration(margin: torch.Tensor, n_bins: int = 10) -> dict:
    """ECE and Brier score of P(chosen wins) = sigmoid(margin), with a reliability table.

    Every pair is counted in both orders (p with outcome 1, 1 - p with outcome 0), so the bins
    cover [0, 1] and a model is judged on how often a pair it gives probability p is won, whichever
    response comes first. Brier is the same in both orders: mean((1 - p)^2).
    """
    p = torch.sigmoid(margin.double())
    preds = torch.cat([p, 1 - p]).float()
    target = torch.cat([torch.ones_like(p), torch.zeros_like(p)]).long()
    ece = float(binary_calibration_error(preds, target, n_bins=n_bins)) if p.numel() else NAN
    edges = torch.linspace(0, 1, n_bins + 1)
    bins = (torch.bucketize(preds, edges[1:-1], right=True))  # bin b covers [edges[b], edges[b+1])
    table = []
    for b in range(n_bins):
        inside = bins == b
        table.append({
            "bin_low": round(float(edges[b]), 4), "bin_high": round(float(edges[b + 1]), 4),
            "confidence": _mean(preds[inside]), "frequency": _mean(target[inside].float()), "n": int(inside.sum()),
        })
    return {"ece": ece, "brier": _mean((1 - p) ** 2), "reliability": table}


def length_bias(reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, chosen_tokens: torch.Tensor,
                rejected_tokens: torch.Tensor, bucket_width: int = 100, match_tolerance: float = 0.1) -> dict:
    """How much of the reward is response length.

    - `length_pearson` / `length_spearman`: reward vs response length in tokens, over all responses.
    - `margin_length_spearman`: reward margin vs length difference, over pairs.
    - `acc_chosen_longer` / `acc_chosen_shorter` and their gap: a length-driven model is right
      when the better answer is the longer one and wrong when it is the shorter one.
    - `longer_baseline_acc`: accuracy of "pick the longer response" on the same pairs.
    - `model_prefers_longer` / `label_prefers_longer`: over pairs of unequal length.
    - `length_balanced_acc` (the length-controlled accuracy): the mean of the two conditional
      accuracies, i.e. the accuracy on a set where the chosen response is the longer one in exactly
      half the pairs, where length carries no information. A pure length scorer gets 0.5.
    - `length_matched_acc`: accuracy on pairs whose lengths differ by at most `match_tolerance`
      of the longer one (length cannot decide those); with its `n`.
    - `buckets`: per `bucket_width` tokens, mean reward of responses of that length and
      accuracy of pairs whose chosen response has that length.
    """
    lc, lr = chosen_tokens.double(), rejected_tokens.double()
    margin = (reward_chosen - reward_rejected).double()
    correct = pair_correct(margin)
    longer, shorter = lc > lr, lc < lr
    unequal = longer | shorter
    acc_longer, acc_shorter = _mean(correct[longer]), _mean(correct[shorter])
    matched = (lc - lr).abs() <= match_tolerance * torch.maximum(lc, lr)
    model_longer = torch.where(longer, correct, 1 - correct)  # 1 where the model ranks the longer one higher
    rewards, lengths = torch.cat([reward_chosen, reward_rejected]).double(), torch.cat([lc, lr])

    buckets = []
    response_bucket, pair_bucket = (lengths // bucket_width).long(), (lc // bucket_width).long()
    for b in sorted(set(response_bucket.tolist())):
        in_pairs = pair_bucket == b
        buckets.append({
            "bucket": f"{b * bucket_width}-{(b + 1) * bucket_width - 1}",
            "responses": int((response_bucket == b).sum()), "mean_reward": _mean(rewards[response_bucket == b]),
            "pairs": int(in_pairs.sum()), "acc": _mean(correct[in_pairs]),
        })
    return {
        "length_pearson": correlation(rewards, lengths, "pearson"),
        "length_spearman": correlation(rewards, lengths, "spearman"),
        "margin_length_spearman": correlation(margin, lc - lr, "spearman"),
        "acc_chosen_longer": acc_longer, "n_chosen_longer": int(longer.sum()),
        "acc_chosen_shorter": acc_shorter, "n_chosen_shorter": int(shorter.sum()),
        "longer_shorter_gap": acc_longer - acc_shorter,
        "longer_baseline_acc": _mean(longer.double() + 0.5 * (lc == lr).double()),
        "model_prefers_longer": _mean(model_longer[unequal]),
        "label_prefers_longer": _mean(longer[unequal].double()),
        "length_balanced_acc": 0.5 * (acc_longer + acc_shorter),
        "length_matched_acc": _mean(correct[matched]), "length_matched_n": int(matched.sum()),
        "buckets": buckets,
    }


def pattern_bias(detectors: dict[str, Callable[[str], bool]], chosen: Sequence[str], rejected: Sequence[str],
                 reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, top_fraction: float = 0.25) -> list[dict]:
    """Per surface pattern: does the reward follow it?

    Over all responses: how many show it, reward difference with vs without, correlation of the
    reward with the 0/1 pattern flag, and its frequency among the top and the bottom `top_fraction`
    of responses by reward. Over the pairs where exactly one response shows it: how often the
    label prefers that response and how often the model does (a model that follows the pattern
    more than the labels do has learned it as a shortcut).
    """
    texts = list(chosen) + list(rejected)
    rewards = torch.cat([reward_chosen, reward_rejected]).double()
    order = torch.argsort(rewards, descending=True)
    k = max(1, int(round(top_fraction * len(texts))))
    correct = pair_correct((reward_chosen - reward_rejected).double())
    rows = []
    for name, detect in detectors.items():
        flag = torch.tensor([bool(detect(t)) for t in texts])
        fc, fr = flag[: len(chosen)], flag[len(chosen):]
        one_side = fc != fr
        model_side = torch.where(fc, correct, 1 - correct)  # 1 where the model ranks the patterned response higher
        rows.append({
            "pattern": name, "n": int(flag.sum()), "frequency": _mean(flag.double()),
            "reward_diff": _mean(rewards[flag]) - _mean(rewards[~flag]),
            "corr": correlation(flag.double(), rewards),
            "top_rate": _mean(flag[order[:k]].double()), "bottom_rate": _mean(flag[order[-k:]].double()),
            "pairs_one_side": int(one_side.sum()),
            "label_prefers": _mean(fc[one_side].double()), "model_prefers": _mean(model_side[one_side]),
        })
    return rows


def group_accuracy(groups: Sequence, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor) -> dict[str, dict]:
    """RewardBench-style per-subset results: {subset: {acc, n, margin}}, subsets sorted by name."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[str(g)].append(i)
    out = {}
    for name in sorted(members):
        idx = torch.tensor(members[name])
        margin = (reward_chosen[idx] - reward_rejected[idx]).double()
        out[name] = {"acc": _mean(pair_correct(margin)), "n": len(idx), "margin": _mean(margin)}
    return out


def probe_results(items: list[dict], item_rewards: torch.Tensor, reward_chosen: torch.Tensor,
                  reward_rejected: torch.Tensor) -> dict[str, dict]:
    """Per probe: `acc`, how often the model still ranks the intact chosen response above the
    rewritten (worse) one; `shift`, mean reward of the rewrite minus that of the text it rewrote;
    `flipped`, the share of pairs the model ranked right before and wrong after; `n`."""
    by_probe: dict[str, list[int]] = defaultdict(list)
    for j, item in enumerate(items):
        by_probe[item["probe"]].append(j)
    out = {}
    for name, js in by_probe.items():
        pair_index = torch.tensor([items[j]["pair_index"] for j in js])
        rewritten = item_rewards[torch.tensor(js)].double()
        better = reward_chosen[pair_index].double()
        source = torch.where(torch.tensor([items[j]["source"] == "chosen" for j in js]),
                             reward_chosen[pair_index], reward_rejected[pair_index]).double()
        before = pair_correct(better - reward_rejected[pair_index].double())
        after = pair_correct(better - rewritten)
        out[name] = {"acc": _mean(after), "n": len(js), "shift": _mean(rewritten - source),
                     "flipped": _mean(((before == 1) & (after < 1)).double()), "acc_before": _mean(before)}
    return out


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
