"""The bias report: every diagnostic of one split in one dict, written as report.json, report.md and
PNG plots, flattened to scalars for Lightning loggers, and logged as W&B tables, histograms and plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rmlab import strict_json
from rmlab.diagnostics import metrics
from rmlab.text.patterns import PATTERNS

PAIR_COLUMNS = ("prompt", "chosen", "rejected", "chosen_response_tokens", "rejected_response_tokens")


def prompt_text(prompt: list[dict] | str) -> str:
    """The last user turn of a prompt, for tables and examples."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else (prompt[-1]["content"] or "") if prompt else ""


def build_report(pairs: dict[str, Sequence], reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
                 probe_items: list[dict] | None = None, probe_rewards: torch.Tensor | None = None, *,
                 bucket_width: int = 100, match_tolerance: float = 0.1, calibration_bins: int = 10,
                 top_fraction: float = 0.25, worst_k: int = 20,
                 subset_columns: Sequence[str] = ("subset", "task", "flaw"), augment_kinds: Sequence[str] = (),
                 augmented: bool = False) -> dict[str, Any]:
    """All diagnostics of one split. `pairs` holds the columns PAIR_COLUMNS (token counts of the
    responses as the model saw them) plus any metadata; rewards are aligned with its rows.
    `augment_kinds`: the probe kinds of data.augment.kinds, left out of `probe_heldout_mean_acc` whether
    or not augmentation was on, so that runs with and without it compare on the same probes; with
    `augmented` (data.augment.share > 0) they are also marked `in_training`."""
    margin = reward_chosen - reward_rejected
    calibration = metrics.calibration(margin, calibration_bins)
    report: dict[str, Any] = {
        "n": len(margin),
        "overall": {**metrics.pairwise(reward_chosen, reward_rejected), "ece": calibration["ece"], "brier": calibration["brier"]},
        "calibration": calibration,
        "length": metrics.length_bias(reward_chosen, reward_rejected, torch.as_tensor(pairs["chosen_response_tokens"]),
                                      torch.as_tensor(pairs["rejected_response_tokens"]), bucket_width, match_tolerance),
        "patterns": metrics.pattern_bias(PATTERNS, pairs["chosen"], pairs["rejected"], reward_chosen, reward_rejected, top_fraction),
        "probes": metrics.probe_results(probe_items, probe_rewards, reward_chosen, reward_rejected) if probe_items else {},
        "groups": {c: metrics.group_accuracy(pairs[c], reward_chosen, reward_rejected)
                   for c in subset_columns if c in pairs and pairs[c] is not None},
        "settings": {"bucket_width": bucket_width, "match_tolerance": match_tolerance, "calibration_bins": calibration_bins,
                     "top_fraction": top_fraction},
    }
    probe_accs = [p["acc"] for p in report["probes"].values()]
    report["probe_mean_acc"] = sum(probe_accs) / len(probe_accs) if probe_accs else metrics.NAN
    for name, probe in report["probes"].items():
        probe["in_training"] = augmented and name in augment_kinds
    heldout = [p["acc"] for name, p in report["probes"].items() if name not in augment_kinds]
    report["probe_heldout_mean_acc"] = sum(heldout) / len(heldout) if heldout else metrics.NAN
    # RewardBench's `subsets`: from a `subset` column if the data has one, else the first grouping present.
    report["subset_column"] = next(iter(report["groups"]), None)
    report["subsets"] = report["groups"].get(report["subset_column"], {})
    worst = torch.argsort(margin)[:worst_k].tolist()
    report["worst"] = [{"prompt": prompt_text(pairs["prompt"][i]), "chosen": pairs["chosen"][i], "rejected": pairs["rejected"][i],
                        "reward_chosen": float(reward_chosen[i]), "reward_rejected": float(reward_rejected[i]),
                        "margin": float(margin[i])} for i in worst]
    return report


def scalars(report: dict[str, Any], stage: str) -> dict[str, float]:
    """Flat `<stage>/bias/...`, `<stage>/probe/...`, `<stage>/subset/...` numbers (finite ones only)."""
    out = {f"{stage}/bias/{k}": report["overall"][k] for k in ("ece", "brier")}
    out.update({f"{stage}/bias/{k}": v for k, v in report["length"].items() if k != "buckets"})
    for row in report["patterns"]:
        for k in ("reward_diff", "corr", "top_rate", "bottom_rate", "label_prefers", "model_prefers"):
            out[f"{stage}/bias/pattern/{row['pattern']}/{k}"] = row[k]
    for name, probe in report["probes"].items():
        for k in ("acc", "shift", "flipped"):
            out[f"{stage}/probe/{name}/{k}"] = probe[k]
    out[f"{stage}/probe/mean_acc"] = report["probe_mean_acc"]
    out[f"{stage}/probe/heldout_mean_acc"] = report["probe_heldout_mean_acc"]
    for name, subset in report["subsets"].items():
        out[f"{stage}/subset/{name}/acc"] = subset["acc"]
    return {k: float(v) for k, v in out.items() if metrics.finite(v)}


# -- files -------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3f}"
    return str(v)


def _table(rows: list[dict], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The compact table printed at the end of an evaluation."""
    o, ln = report["overall"], report["length"]
    lines = [f"pairs {report['n']}   acc {_fmt(o['acc'])}   loss {_fmt(o['loss'])}   margin {_fmt(o['margin'])}   "
             f"ECE {_fmt(o['ece'])}   Brier {_fmt(o['brier'])}",
             f"length: spearman {_fmt(ln['length_spearman'])}   acc chosen longer {_fmt(ln['acc_chosen_longer'])} "
             f"(n={ln['n_chosen_longer']}) vs shorter {_fmt(ln['acc_chosen_shorter'])} (n={ln['n_chosen_shorter']})   "
             f"pick-longer baseline {_fmt(ln['longer_baseline_acc'])}   length-balanced acc {_fmt(ln['length_balanced_acc'])}"]
    if report["probes"]:
        lines.append("probes (acc = still prefers the better response): " + "   ".join(
            f"{name} {_fmt(p['acc'])}" for name, p in report["probes"].items()))
    if report["subsets"]:
        lines.append(f"subsets by {report['subset_column']}: " + "   ".join(
            f"{name} {_fmt(s['acc'])} (n={s['n']})" for name, s in report["subsets"].items()))
    return lines


def to_markdown(report: dict[str, Any], title: str = "Reward model bias report") -> str:
    o, ln = report["overall"], report["length"]
    md = [f"# {title}", "", "```", *summary_lines(report), "```", "",
          "## Overall", "", _table([o], ["n", "acc", "loss", "margin", "ece", "brier", "reward_chosen_mean",
                                         "reward_rejected_mean", "reward_std"]), "",
          "ECE/Brier: calibration of sigmoid(margin) as P(chosen wins); each pair counted in both orders.", "",
          "![reliability](reliability.png) ![rewards](rewards.png)", "",
          "## Length", "",
          _table([ln], ["length_pearson", "length_spearman", "margin_length_spearman", "acc_chosen_longer",
                        "n_chosen_longer", "acc_chosen_shorter", "n_chosen_shorter", "longer_shorter_gap"]), "",
          _table([ln], ["longer_baseline_acc", "label_prefers_longer", "model_prefers_longer", "length_balanced_acc",
                        "length_matched_acc", "length_matched_n"]), "",
          "length_balanced_acc = mean of the accuracies when the chosen response is the longer and the shorter one: "
          "the accuracy on a set where length carries no information (a pure length scorer gets 0.5). "
          f"length_matched_acc: pairs whose response lengths differ by at most {report['settings']['match_tolerance']:.0%}. "
          "Lengths are response tokens as the model saw them.", "",
          f"Per {report['settings']['bucket_width']}-token bucket (mean reward of responses of that length; accuracy of "
          "pairs whose chosen response has that length):", "",
          _table(ln["buckets"], ["bucket", "responses", "mean_reward", "pairs", "acc"]), "", "![length](length.png)", "",
          "## Surface patterns", "",
          "reward_diff: mean reward with minus without; top/bottom_rate: frequency among the top and bottom "
          f"{report['settings']['top_fraction']:.0%} of responses by reward; label/model_prefers: over pairs where only "
          "one response shows it, how often the label / the model prefers that one.", "",
          _table(report["patterns"], ["pattern", "n", "reward_diff", "corr", "top_rate", "bottom_rate", "pairs_one_side",
                                      "label_prefers", "model_prefers"]), ""]
    if report["probes"]:
        md += ["## Adversarial probes", "",
               "acc: how often the intact chosen response still outscores the rewritten, worse one; shift: mean reward of "
               "the rewrite minus the text it rewrote; flipped: pairs ranked right before and wrong after; invisible: "
               "rewrites whose change falls beyond data.max_length (the model would see the original), left out; "
               "in_training: the model was trained on counterfactual pairs of this kind (data.augment, in wording of its "
               "own). Held-out probe mean acc, over the kinds outside data.augment.kinds (never trained on, augmentation "
               f"on or off): {_fmt(report['probe_heldout_mean_acc'])}.", "",
               _table([{"probe": k, **v} for k, v in report["probes"].items()],
                      ["probe", "n", "acc", "acc_before", "shift", "flipped", "invisible", "in_training"]),
               "", "![probes](probes.png)", ""]
    for column, groups in report["groups"].items():
        md += [f"## Accuracy by {column}", "", _table([{column: k, **v} for k, v in groups.items()], [column, "n", "acc", "margin"]), ""]
    md += ["## Worst-ranked pairs", "", _table([{k: _clip(v) if isinstance(v, str) else v for k, v in w.items()} for w in report["worst"]],
                                                 ["margin", "prompt", "chosen", "rejected"]), ""]
    return "\n".join(md)


# A bucket or bin with fewer items than this is drawn hollow and grey, and never joined to its
# neighbours by a line: its mean is too noisy to read as part of a trend.
SPARSE = 20


def _runs(points: list[tuple[float, float, int]]) -> list[list[tuple[float, float]]]:
    """Consecutive (x, y) of the points with at least SPARSE items: the stretches a line may join."""
    runs, current = [], []
    for x, y, n in points:
        if n >= SPARSE and y == y:
            current.append((x, y))
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def _trend(ax, points: list[tuple[float, float, int]], color: str, marker: str, label: str, offset: int = 6) -> None:
    """Points with their counts: solid and joined where a bucket holds >= SPARSE items, hollow grey alone where not."""
    for i, run in enumerate(_runs(points)):
        ax.plot(*zip(*run), f"{marker}-", color=color, lw=1.5, ms=6, label=label if i == 0 else None)
    sparse = [(x, y) for x, y, n in points if n < SPARSE and y == y]
    if sparse:
        ax.plot(*zip(*sparse), marker, color="grey", mfc="none", ms=6, ls="none",
                label=f"{label}: fewer than {SPARSE} (not joined)")
    for x, y, n in points:
        if y == y:
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, offset), ha="center", fontsize=7,
                        color=color if n >= SPARSE else "grey")


def plot(report: dict[str, Any], reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
         pairs: dict[str, Sequence], out_dir: Path) -> dict[str, Path]:
    """reliability.png, rewards.png, length.png and (with probes) probes.png; returns name -> path.

    Every plot has axis labels with units and a legend, shows how many items each point stands for,
    and draws buckets or bins of fewer than SPARSE items hollow and unjoined (a bucket of 1 next
    to one of 599 must not read as a trend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}

    def save(fig, name):
        fig.tight_layout()
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=110, bbox_inches="tight")  # legends below an axis stay in the picture
        plt.close(fig)

    n_pairs = report["n"]
    bins = [b for b in report["calibration"]["reliability"] if b["n"]]
    fig, ax = plt.subplots(figsize=(5, 4.4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    _trend(ax, [(b["confidence"], b["frequency"], b["n"]) for b in bins], "C0", "o", "model, per bin (n = responses)")
    ax.set(xlim=(0, 1), ylim=(0, 1.08), xlabel="predicted P(this response wins) = sigmoid(reward margin)",
           ylabel="observed fraction that won",
           title=f"Reliability: {n_pairs} pairs, each in both orders (ECE {report['overall']['ece']:.3f})")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=7)
    save(fig, "reliability")

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.hist([reward_chosen.numpy(), reward_rejected.numpy()], bins=40, alpha=0.7, histtype="stepfilled",
            label=[f"chosen ({len(reward_chosen)})", f"rejected ({len(reward_rejected)})"])
    ax.set(xlabel="reward (the model's scalar score, unitless)", ylabel="responses per bin (count)",
           title=f"Reward distributions, {n_pairs} pairs")
    ax.legend(fontsize=8)
    save(fig, "rewards")

    ln, width = report["length"], report["settings"]["bucket_width"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a1.scatter(pairs["chosen_response_tokens"], reward_chosen.numpy(), s=6, alpha=0.5, label=f"chosen ({n_pairs})")
    a1.scatter(pairs["rejected_response_tokens"], reward_rejected.numpy(), s=6, alpha=0.5, label=f"rejected ({n_pairs})")
    a1.set(xlabel="response length (tokens)", ylabel="reward (unitless score)",
           title=f"Reward vs length, every response (Spearman {ln['length_spearman']:.2f})")
    a1.legend(fontsize=8)
    # Buckets at their mid-point on a numeric axis: an empty bucket leaves a gap instead of vanishing.
    mids = [int(b["bucket"].split("-")[0]) + width / 2 for b in ln["buckets"]]
    _trend(a2, [(x, b["mean_reward"], b["responses"]) for x, b in zip(mids, ln["buckets"])], "C0", "o", "mean reward")
    a2.set(xlabel=f"response length (tokens; {width}-token buckets)", ylabel="mean reward of the bucket's responses",
           title="Per length bucket (n = responses; accuracy: n pairs)")
    a3 = a2.twinx()
    _trend(a3, [(x, b["acc"], b["pairs"]) for x, b in zip(mids, ln["buckets"])], "C2", "s", "pair accuracy", offset=-12)
    a3.set_ylim(-0.05, 1.1)
    a3.set_ylabel("pair accuracy (fraction), by chosen's length")
    handles = [h for ax in (a2, a3) for h in ax.get_legend_handles_labels()[0]]
    labels = [label for ax in (a2, a3) for label in ax.get_legend_handles_labels()[1]]
    a2.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7)
    a2.set_xlim(0, max(mids) + width / 2 if mids else width)
    save(fig, "length")

    if report["probes"]:
        names = list(report["probes"])
        fig, ax = plt.subplots(figsize=(7.5, 4))
        labels = [f"{n}\n(n={report['probes'][n]['n']})" for n in names]
        few = [report["probes"][n]["n"] < SPARSE for n in names]
        bars = ax.bar(labels, [report["probes"][n]["acc"] for n in names], color=["lightgrey" if f else "C0" for f in few],
                      label="probe acc (after the rewrite)")
        for bar, f in zip(bars, few):
            if f:
                bar.set_hatch("//")
        if any(few):
            ax.bar([labels[few.index(True)]], [0], color="lightgrey", hatch="//", label=f"fewer than {SPARSE} pairs: noisy")
        ax.plot(labels, [report["probes"][n]["acc_before"] for n in names], "k_", ms=18,
                label="acc on the same pairs, unrewritten")
        ax.axhline(0.5, color="grey", lw=1, ls="--", label="chance (0.5)")
        ax.set(ylim=(0, 1), ylabel="fraction of pairs preferring the better response",
               title="Adversarial probes (n = rewritten pairs per probe)")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7)
        save(fig, "probes")
    return paths


def write(report: dict[str, Any], reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
          pairs: dict[str, Sequence], out_dir: Path, title: str = "Reward model bias report") -> dict[str, Path]:
    """report.json, report.md and the PNG plots into out_dir; returns the plot paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(strict_json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "report.md").write_text(to_markdown(report, title) + "\n")
    return plot(report, reward_chosen, reward_rejected, pairs, out_dir)


# -- W&B ---------------------------------------------------------------------------------------
def log_wandb(run, report: dict[str, Any], reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, stage: str,
              step: int, images: dict[str, Path] | None = None) -> None:
    """Tables (length buckets, patterns, probes, subsets, worst pairs, reliability), reward
    histograms and bar/line plots under `<stage>/...`, in one W&B log call."""
    import wandb

    def table(rows: list[dict], columns: Sequence[str]):
        return wandb.Table(columns=list(columns), data=[[r.get(c) for c in columns] for r in rows])

    buckets = table(report["length"]["buckets"], ["bucket", "responses", "mean_reward", "pairs", "acc"])
    patterns = table(report["patterns"], ["pattern", "n", "reward_diff", "corr", "top_rate", "bottom_rate",
                                          "pairs_one_side", "label_prefers", "model_prefers"])
    data = {
        f"{stage}/tables/length_buckets": buckets,
        f"{stage}/tables/patterns": patterns,
        f"{stage}/tables/reliability": table(report["calibration"]["reliability"], ["bin_low", "bin_high", "confidence", "frequency", "n"]),
        f"{stage}/tables/worst_pairs": table(report["worst"], ["margin", "reward_chosen", "reward_rejected", "prompt", "chosen", "rejected"]),
        f"{stage}/hist/reward_chosen": wandb.Histogram(reward_chosen.numpy()),
        f"{stage}/hist/reward_rejected": wandb.Histogram(reward_rejected.numpy()),
        f"{stage}/plots/reward_by_length": wandb.plot.line(buckets, "bucket", "mean_reward", title="Mean reward per length bucket"),
        f"{stage}/plots/pattern_model_prefers": wandb.plot.bar(patterns, "pattern", "model_prefers", title="Model prefers the patterned response"),
    }
    if report["probes"]:
        probes = table([{"probe": k, **v} for k, v in report["probes"].items()],
                       ["probe", "n", "acc", "acc_before", "shift", "flipped", "invisible"])
        data[f"{stage}/tables/probes"] = probes
        data[f"{stage}/plots/probe_acc"] = wandb.plot.bar(probes, "probe", "acc", title="Probe accuracy")
    for column, groups in report["groups"].items():
        data[f"{stage}/tables/by_{column}"] = table([{column: k, **v} for k, v in groups.items()], [column, "n", "acc", "margin"])
    for name, path in (images or {}).items():
        data[f"{stage}/plots/{name}"] = wandb.Image(str(path))
    data["trainer/global_step"] = step  # the x-axis Lightning's WandbLogger defines
    run.log(data)
