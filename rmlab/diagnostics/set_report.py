"""The report of a reward model on response sets (K responses per prompt with gold scores), as training
and rmlab.evaluate write it for set data: best-of-K metrics against pick-the-longest and random, the
length bias of the top pick, and the best-of-N audit (rmlab.diagnostics.bon)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rmlab import strict_json
from rmlab.diagnostics import bon
from rmlab.diagnostics.sets import longest_pick_rates, random_baseline, set_metrics
from rmlab.model.eval_store import ScoredSets


def set_report(scored: ScoredSets, responses: Sequence[Sequence[str]], origins: Sequence[str],
               worst_k: int = 20) -> dict[str, Any]:
    """{sets, responses, metrics, longest, random, longest_pick, best_of_n, overrated} of a split's scored
    sets; `responses` and `origins` are the split's, in `scored.index` order. "Longest" is by characters
    (the text's own length, whatever max_length cut from what the model read), as in rmlab.audit."""
    rewards = [row[mask].tolist() for row, mask in zip(scored.rewards, scored.mask)]
    gold = [row[mask].tolist() for row, mask in zip(scored.scores, scored.mask)]
    lengths = [[len(text) for text in texts] for texts in responses]
    worst = bon.overrated(rewards, gold, responses, worst_k)
    for row in worst:
        row["origin"] = origins[row["set"]]
    return {
        "sets": len(rewards), "responses": sum(len(r) for r in rewards),
        "metrics": set_metrics(rewards, gold), "longest": set_metrics(lengths, gold), "random": random_baseline(gold),
        "longest_pick": longest_pick_rates(rewards, gold, lengths),
        "best_of_n": bon.bon_audit({"proxy": rewards}, gold, lengths), "overrated": worst,
    }


def set_scalars(report: dict[str, Any], stage: str) -> dict[str, float]:
    """`<stage>/sets/<name>` scalars of a set report (docs/metrics.md)."""
    out = {f"{stage}/sets/{key}": value for key, value in report["metrics"].items() if key != "sets"}
    out.update({f"{stage}/sets/longest_{key}": value for key, value in report["longest"].items() if key != "sets"})
    out.update({f"{stage}/sets/random_{key}": value for key, value in report["random"].items() if key != "sets"})
    out.update({f"{stage}/sets/{key}": value for key, value in report["longest_pick"].items()})
    summary = report["best_of_n"]["summary"]["proxy"]
    out.update({f"{stage}/sets/bon_peak_n": summary["peak_n"], f"{stage}/sets/bon_max_n": report["best_of_n"]["max_n"],
                f"{stage}/sets/bon_gap_to_gold": summary["gap_to_gold_at_max_n"],
                f"{stage}/sets/bon_turns_down": float(summary["turns_down"])})
    return {key: float(value) for key, value in out.items() if not (isinstance(value, float) and math.isnan(value))}


def write_set_report(report: dict[str, Any], directory: Path, title: str) -> None:
    """report.json, report.md and bon.png into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(strict_json.dumps(report, indent=2))
    table = {"reward model": report["metrics"], "longest": report["longest"],
             "random": {key: report["random"].get(key, math.nan) for key in report["metrics"]}}
    lines = bon.to_markdown(report["best_of_n"], table, report["overrated"], title)
    pick = report["longest_pick"]
    lines += (f"\nThe reward model's top pick is a longest response in {pick['rm_top_longest']:.1%} of the sets; "
              f"the gold-best response is in {pick['gold_top_longest']:.1%}.\n")
    (directory / "report.md").write_text(lines)
    bon.plot(report["best_of_n"], str(directory / "bon.png"), title)
