"""Response sets end to end: one short training on synthetic sets (MiniLM, Plackett-Luce, one row per
response; its first half on 2 DDP processes, continued from that checkpoint in one), then every command
reads its checkpoint: evaluate on a set file, the best-of-N audit (an ensemble with the checkpoint of the
first half, and a gold-equal proxy), scoring a set file."""

from __future__ import annotations

import csv
import json

import pytest

from rmlab.audit import audit
from rmlab.evaluate import evaluate
from rmlab.score import score

from conftest import compose_entry, run_cli

SET_RUN = ["experiment=smoke", "data=synthetic_sets", "data.source.n_train=24", "data.source.n_val=8",
           "data.source.n_test=12", "data.batch_size=4", "set_loss=plackett_luce", "trainer.accelerator=cpu",
           "callbacks.throughput.warmup_steps=1"]  # 1: the continued run (set_run) trains 3 steps
# A file of sets of 2 to 5 responses; gold scores with a tie, so every metric has something to count.
SETS = [
    {"prompt": "What is 2 + 3?", "responses": ["5", "6", "It is 7.", "Five, which is 5."], "scores": [1, 0, 0, 1], "subset": "math"},
    {"prompt": "Name a primary colour.", "responses": ["red", "a car"], "scores": [1, 0], "subset": "facts"},
    {"prompt": "Sort 3 1 2.", "responses": ["1 2 3", "3 2 1", "1 3 2", "2 1 3", "The sorted list is 1 2 3."],
     "scores": [1, 0, 0, 0, 1], "subset": "math"},
]


@pytest.fixture(scope="session")
def set_run(tmp_path_factory):
    """`python -m rmlab.train data=synthetic_sets ...` on 2 DDP processes of 2 sets each, stopped after 3 of its
    6 steps (last.ckpt kept; run dir <base>/first), then continued from that checkpoint in one process of 4 sets
    (the same sets per step), as a resumed set training: its run dir, summary and best checkpoint."""
    base = tmp_path_factory.mktemp("set_run")
    first, run_dir = base / "first", base / "run"
    result = run_cli("rmlab.train", [*(o for o in SET_RUN if o != "data.batch_size=4"), "data.batch_size=2", "trainer.devices=2",
                                     "trainer.max_steps=3", "callbacks.last_checkpoint.every_n_train_steps=3",
                                     "callbacks.keep_after_fit.keep_last=true", "test_after_fit=false",
                                     f"hydra.run.dir={first}"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("rmlab.train", [*SET_RUN, f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={run_dir}"], base)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    return run_dir, summary, summary["best_checkpoint"]


@pytest.fixture
def sets_file(tmp_path):
    path = tmp_path / "sets.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in SETS))
    return path


@pytest.mark.e2e
@pytest.mark.slow  # its set-up trains the set run (~30 s)
def test_training_on_response_sets_reports_sets(set_run):
    run_dir, summary, _ = set_run
    assert (summary["data/train/sets"], summary["data/train/responses"]) == (24, 96)  # k = 4
    assert summary["data/test/sets"] == 12 and summary["data/test/k_min"] == summary["data/test/k_max"] == 4
    # continued from step 3 of the epoch's 6: the last 3 batches only (a restart of the epoch would end at step 9)
    assert (summary["train/steps"], summary["train/sets_seen"]) == (6, 24) and "train/pairs_seen" not in summary
    assert 0.0 <= summary["test/acc"] <= 1.0 and "train/pairs_per_s" not in summary
    assert summary["train/responses_per_s"] == pytest.approx(4 * summary["train/sets_per_s"])  # k = 4 throughout
    # the random baseline of sets of 4 with one correct answer: 1/4 best-of-K, regret 3/4
    assert summary["test/sets/random_best_of_k_acc"] == pytest.approx(0.25)
    assert summary["test/sets/random_regret"] == pytest.approx(0.75)
    assert summary["test/sets/bon_max_n"] == 4
    report = json.loads((run_dir / "report.json").read_text())
    assert report["sets"] == 12 and report["best_of_n"]["ns"] == [1, 2, 4]
    assert report["best_of_n"]["curves"]["gold"] == pytest.approx([0.25, 0.5, 1.0])
    assert "## Best-of-N" in (run_dir / "report.md").read_text() and (run_dir / "bon.png").stat().st_size > 0


@pytest.mark.e2e
@pytest.mark.multiprocess
def test_two_ranks_train_whole_sets_and_score_the_whole_val_split_as_one_process_does(set_run, tmp_path):
    run_dir, _, _ = set_run
    first = run_dir.parent / "first"
    assert sorted(p.name for p in first.glob("*.log")) == ["train.log", "train_ddp_process_1.log"]
    two_ranks = json.loads((first / "summary.json").read_text())
    assert (two_ranks["train/steps"], two_ranks["train/sets_seen"]) == (3, 12)  # 3 steps of 2 sets on each of 2 ranks
    logged = {k: float(v) for row in csv.DictReader((first / "csv" / "metrics.csv").open())
              for k, v in row.items() if k.startswith("val/") and v}
    # The same checkpoint evaluated in this process, on one device: the val split's 8 sets gathered whole.
    report = evaluate(compose_entry("evaluate", [f"ckpt={two_ranks['best_checkpoint']}", "split=val", "logger=csv"],
                                    tmp_path / "evaluate"))
    assert report["sets"] == 8 and report["responses"] == 32
    for metric in ("best_of_k_acc", "kendall_tau", "spearman", "regret"):
        assert logged[f"val/sets/{metric}"] == pytest.approx(report["metrics"][metric], abs=1e-6), metric
    one = {k: float(v) for row in csv.DictReader((tmp_path / "evaluate" / "csv" / "metrics.csv").open())
           for k, v in row.items() if k == "val/acc" and v}
    assert logged["val/acc"] == two_ranks["val/acc"] == pytest.approx(one["val/acc"], abs=1e-6)


@pytest.mark.e2e
def test_evaluate_a_set_file(set_run, sets_file, tmp_path):
    _, _, ckpt = set_run
    out = tmp_path / "evaluate"  # in this process; the command line of rmlab.evaluate: tests/test_evaluate.py
    evaluate(compose_entry("evaluate", [f"ckpt={ckpt}", "data=local", f"data.path={sets_file}", "logger=csv"], out))
    report = json.loads((out / "report.json").read_text())
    assert (report["sets"], report["responses"]) == (3, 11)
    assert report["random"] == {"sets": 3, "best_of_k_acc": pytest.approx((2 / 4 + 1 / 2 + 2 / 5) / 3),
                                "regret": pytest.approx((0.5 + 0.5 + 0.6) / 3)}
    # the longest response is gold-best in sets 1 and 3 and not in set 2 ("a car" is longer than "red")
    assert report["longest"]["best_of_k_acc"] == pytest.approx(2 / 3)
    assert report["best_of_n"]["max_n"] == 4 and report["best_of_n"]["sets"] == 2  # the set of 2 is too small


@pytest.mark.e2e
@pytest.mark.slow
def test_audit_of_an_ensemble_and_a_gold_equal_proxy(set_run, sets_file, tmp_path):
    run_dir, _, set_ckpt = set_run
    # The second member: the checkpoint the run's first half (2 DDP processes) kept, 3 steps before the end.
    halfway = json.loads((run_dir.parent / "first" / "summary.json").read_text())["best_checkpoint"]
    out = tmp_path / "audit"
    result = run_cli("rmlab.audit", [f"ckpt=[{set_ckpt},{halfway}]", f"data.path={sets_file}", "bon.max_n=2",
                                     f"hydra.run.dir={out}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    curves = report["best_of_n"]["curves"]
    assert sorted(curves) == ["gold", "longest", "mean", "member_1", "member_2", "min", "random", "uncertainty_weighted"]
    assert report["best_of_n"]["ns"] == [1, 2] and report["best_of_n"]["sets"] == 3
    assert curves["random"] == pytest.approx([(2 / 4 + 1 / 2 + 2 / 5) / 3] * 2)
    rows = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    for row, expected in zip(rows, SETS):
        members = [row["member_1"], row["member_2"]]
        assert len(row["mean"]) == len(expected["responses"]) and row["gold"] == expected["scores"]
        assert row["mean"] == pytest.approx([(a + b) / 2 for a, b in zip(*members)])
        assert row["min"] == pytest.approx([min(a, b) for a, b in zip(*members)])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bon/sets"] == 3 and "uncertainty/std_error_spearman" in summary
    assert (out / "bon.png").stat().st_size > 0 and "## The top picks that cost the most gold" in (out / "report.md").read_text()

    # The member's rewards are the ones rmlab.score gives (one Scorer for both)
    scored = tmp_path / "scored.jsonl"
    score(compose_entry("score", [f"model_path={set_ckpt}", f"data.path={sets_file}", f"out={scored}"], tmp_path / "score"))
    scored_rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert [r["rewards"] for r in scored_rows] == [r["member_1"] for r in rows]
    assert [{k: r[k] for k in SETS[0]} for r in scored_rows] == SETS  # every field kept

    # A proxy equal to the gold reward draws the gold curve exactly
    gold_equal = audit(compose_entry("audit", [f"ckpt={set_ckpt}", f"gold={set_ckpt}", f"data.path={sets_file}",
                                               "~logger"], tmp_path / "gold_equal"))
    assert gold_equal["best_of_n"]["curves"]["proxy"] == gold_equal["best_of_n"]["curves"]["gold"]
