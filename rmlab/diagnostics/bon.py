"""The best-of-N audit: what optimization pressure does with a reward model, before anyone runs RL.

Best-of-N picks the highest-reward response among N samples; as N grows the proxy (the reward model)
is optimized harder. Its picks' gold score first rises and then, where the proxy over-rates something,
falls (Gao, Schulman & Hilton 2023, "Scaling laws for reward model overoptimization", arXiv 2210.10760).
Here the N samples are drawn from a response set with gold scores, and the expected gold score of the
pick is computed exactly over all subsets of size N (rmlab.diagnostics.sets.best_of_n), for the proxy
and for three references: the gold reward itself (the ceiling), "pick the longest" and random choice.

Every function takes per-set sequences (`proxy[s]`, `gold[s]`, `lengths[s]`: the K_s values of set s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from rmlab.diagnostics.sets import Sets, best_of_n, best_of_n_kl, fit_bon_scaling

REFERENCES = ("gold", "longest", "random")


def default_max_n(sizes: Sequence[int]) -> int:
    """The largest power of two that at least half of the sets reach (at least 2).
    Raises ValueError when no set has 2 responses."""
    if not sizes or max(sizes) < 2:
        raise ValueError("the best-of-N audit needs response sets of at least 2 responses")
    median = sorted(sizes)[(len(sizes) - 1) // 2]
    return max(2, 2 ** int(math.log2(max(median, 2))))


def n_grid(max_n: int) -> list[int]:
    """1, 2, 4, ... and max_n itself (the x values of the curves)."""
    grid = [2 ** i for i in range(int(math.log2(max_n)) + 1)]
    return grid if grid[-1] == max_n else grid + [max_n]


def bon_curve(proxy: Sets, gold: Sets, ns: Sequence[int]) -> list[float]:
    """Mean over sets of the exact expected gold score of the proxy's best-of-n pick, for each n."""
    return [float(np.mean([best_of_n(p, g, n) for p, g in zip(proxy, gold)])) for n in ns]


def curve_summary(curve: Sequence[float], gold_curve: Sequence[float], ns: Sequence[int],
                  drop_tolerance: float) -> dict[str, float | int | bool]:
    """Where a best-of-N curve peaks and how it ends, against the gold curve of the same sets.

    `turns_down` flags over-optimization: the curve peaks before the largest n and ends more than
    `drop_tolerance` times the gold curve's rise (gold at max n minus gold at n = 1) below its peak.
    `alpha`, `beta`: Gao et al.'s fit gain = d (alpha - beta d), d = sqrt(KL) (fit_bon_scaling)."""
    kl = [best_of_n_kl(n) for n in ns]
    alpha, beta = fit_bon_scaling(kl, [c - curve[0] for c in curve])
    peak = int(np.argmax(curve))
    rise = max(gold_curve[-1] - gold_curve[0], 1e-12)
    return {
        "peak_n": int(ns[peak]), "peak_gold": float(curve[peak]), "gold_at_max_n": float(curve[-1]),
        "gap_to_gold_at_max_n": float(gold_curve[-1] - curve[-1]), "alpha": alpha, "beta": beta,
        "turns_down": bool(peak < len(ns) - 1 and curve[peak] - curve[-1] > drop_tolerance * rise),
    }


def bon_audit(proxies: Mapping[str, Sets], gold: Sets, lengths: Sets, max_n: int | None = None,
              drop_tolerance: float = 0.05) -> dict:
    """Best-of-N curves of every proxy (e.g. a single model, or an ensemble's aggregations) and of the
    references `gold`, `longest` (the proxy is the response length) and `random` (a constant proxy:
    every pick is the set's mean gold), on the sets with at least max_n responses (default:
    default_max_n), so every point of every curve averages the same sets.

    Returns {"max_n", "ns", "kl" (nats), "sets", "sets_too_small", "curves": {name: [gold at each n]},
    "summary": {name: curve_summary}}. Raises ValueError when no set reaches max_n or the sequences
    disagree in length."""
    sizes = [len(g) for g in gold]
    if any(len(p) != len(gold) for p in proxies.values()) or len(lengths) != len(gold):
        raise ValueError("every proxy, the gold scores and the lengths must give one sequence per set")
    max_n = max_n or default_max_n(sizes)
    keep = [s for s, size in enumerate(sizes) if size >= max_n]
    if not keep:
        raise ValueError(f"no response set has {max_n} responses (largest: {max(sizes)}); lower max_n")
    pick = lambda sets: [sets[s] for s in keep]  # noqa: E731
    kept_gold = pick(gold)
    all_proxies = {**{name: pick(p) for name, p in proxies.items()}, "gold": kept_gold, "longest": pick(lengths),
                   "random": [[0.0] * len(g) for g in kept_gold]}
    ns = n_grid(max_n)
    curves = {name: bon_curve(p, kept_gold, ns) for name, p in all_proxies.items()}
    return {
        "max_n": max_n, "ns": ns, "kl": [best_of_n_kl(n) for n in ns], "sets": len(keep),
        "sets_too_small": len(gold) - len(keep), "curves": curves,
        "summary": {name: curve_summary(curve, curves["gold"], ns, drop_tolerance) for name, curve in curves.items()},
    }


def overrated(proxy: Sets, gold: Sets, texts: Sequence[Sequence[str]], top: int = 10) -> list[dict]:
    """The proxy's top picks that cost the most gold: per set, the response with the highest proxy
    reward (the first of a tie) and its regret (the set's best gold minus its gold); the `top` largest
    regrets, largest first, with set index, response index, text, reward, gold and best gold."""
    rows = []
    for s, (p, g, t) in enumerate(zip(proxy, gold, texts)):
        k = int(np.argmax(p))
        rows.append({"set": s, "response": k, "regret": float(max(g) - g[k]), "reward": float(p[k]),
                     "gold": float(g[k]), "best_gold": float(max(g)), "text": t[k]})
    return sorted(rows, key=lambda row: -row["regret"])[:top]


def to_markdown(audit: dict, set_scores: Mapping[str, Mapping[str, float]], worst: Sequence[dict], title: str) -> str:
    """The audit as a Markdown report: set metrics, the curves' table, each curve's summary, the over-rated picks."""
    names = list(audit["curves"])
    lines = [f"# {title}", "",
             f"{audit['sets']} response sets with at least {audit['max_n']} responses "
             f"({audit['sets_too_small']} smaller sets left out of the curves).", "",
             "## Best-of-K on the whole sets", "", "| scorer | " + " | ".join(next(iter(set_scores.values()))) + " |",
             "|---|" + "---|" * len(next(iter(set_scores.values())))]
    lines += [f"| {name} | " + " | ".join(f"{v:.4g}" for v in row.values()) + " |" for name, row in set_scores.items()]
    lines += ["", "## Best-of-N: expected gold score of the pick", "",
              "| N | KL (nats) | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for i, (n, kl) in enumerate(zip(audit["ns"], audit["kl"])):
        lines.append(f"| {n} | {kl:.3f} | " + " | ".join(f"{audit['curves'][name][i]:.4f}" for name in names) + " |")
    lines += ["", "| curve | peak N | gold at peak | gold at max N | gap to gold at max N | alpha | beta | turns down |",
              "|---|---|---|---|---|---|---|---|"]
    for name, s in audit["summary"].items():
        lines.append(f"| {name} | {s['peak_n']} | {s['peak_gold']:.4f} | {s['gold_at_max_n']:.4f} | "
                     f"{s['gap_to_gold_at_max_n']:.4f} | {s['alpha']:.4f} | {s['beta']:.4f} | {'**yes**' if s['turns_down'] else 'no'} |")
    lines += ["", "## The top picks that cost the most gold", "", "| set | reward | gold | best gold | response |",
              "|---|---|---|---|---|"]
    for row in worst:
        text = " ".join(row["text"].split())
        text = text if len(text) <= 160 else text[:157] + "..."
        lines.append(f"| {row['set']} | {row['reward']:.4g} | {row['gold']:.4g} | {row['best_gold']:.4g} | "
                     f"{text.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def plot(audit: dict, path: str, title: str) -> None:
    """PNG of the curves: expected gold score of the pick against the best-of-N KL (nats), N on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"gold": ("k", "-"), "longest": ("tab:orange", "--"), "random": ("grey", ":")}
    for name, curve in audit["curves"].items():
        color, line = styles.get(name, (None, "-"))
        ax.plot(audit["kl"], curve, marker="o", color=color, linestyle=line, label=name)
    ax.set_xlabel("KL of best-of-N (nats): log N - (N - 1) / N")
    ax.set_ylabel("expected gold score of the pick")
    top = ax.secondary_xaxis("top")
    top.set_xticks(audit["kl"], [str(n) for n in audit["ns"]])
    top.set_xlabel("N")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
