"""The response-set data configs read hand-written rows in the real column layouts of their hub
datasets (offline: the hub itself cannot be reached), and the AlpacaEval / synthetic set sources."""

import gzip
import json
import math

import pytest
from datasets import Dataset
from omegaconf import OmegaConf

from rmlab.data.formats import prompt_key
from rmlab.data.set_reader import read_sets
from rmlab.data.sources import AlpacaEvalSets, SyntheticSets
from rmlab.errors import DataError

from conftest import compose_train


def read_with_config(data: str, rows: list[dict], tmp_path, split: str = "train", overrides: tuple = ()):
    """read_sets on `rows` with the data config's format, columns and bad-row policy, as composed for training."""
    cfg = OmegaConf.to_container(compose_train([f"data={data}", *overrides], tmp_path).data, resolve=True)
    return read_sets(Dataset.from_list(rows), f"{cfg['source']['name']}[{split}]", split, format=cfg["format"],
                     columns=cfg["columns"], on_bad_row=cfg["on_bad_row"])


def completion(model, response, overall, fine_grained, rating):
    """One completion of openbmb/UltraFeedback, every field in its place."""
    aspect = {"Rating": rating, "Rationale": "...", "Rationale For Rating": None, "Type": None}
    return {"annotations": {"helpfulness": aspect, "honesty": aspect, "instruction_following": aspect, "truthfulness": aspect},
            "critique": "...", "custom_system_prompt": "You are an AI assistant.", "fine-grained_score": fine_grained,
            "model": model, "overall_score": overall, "principle": "helpfulness", "response": response}


def test_ultrafeedback_ratings_reads_completions_with_their_fine_grained_score(tmp_path):
    rows = [
        {"source": "evol_instruct", "instruction": "Name a prime number.", "models": ["a", "b", "c", "d"],
         "completions": [completion("a", "7", 8.0, 4.75, "5"), completion("b", "9", 3.0, 1.5, "2"),
                         completion("c", "Two.", 7.5, 4.75, "5"), completion("d", "4", 2.0, 1.25, "1")],
         "correct_answers": ["None"], "incorrect_answers": ["None"]},
        {"source": "flan_v2", "instruction": "Say hi.", "models": ["a", "b", "c", "d"],
         "completions": [completion("a", "Hi", 6.0, 4.0, "4"), completion("b", "Hello", 5.0, float("nan"), "N/A"),
                         completion("c", "Hey", 5.0, 3.5, "4"), completion("d", "Yo", 4.0, 3.0, "3")],
         "correct_answers": ["None"], "incorrect_answers": ["None"]},
    ]
    read = read_with_config("ultrafeedback_ratings", rows, tmp_path)
    prompt = [{"role": "user", "content": "Name a prime number."}]
    assert read.sets.to_list() == [{
        "prompt": [{**prompt[0], "fields": None}], "responses": ["7", "9", "Two.", "4"], "scores": [4.75, 1.5, 4.75, 1.25],
        "prompt_key": prompt_key(prompt), "origin": "openbmb/UltraFeedback[train] row 1", "source": "evol_instruct",
        "models": '["a", "b", "c", "d"]', "correct_answers": '["None"]', "incorrect_answers": '["None"]'}]
    assert [(r["origin"], r["reason"], r["problem"]) for r in read.rejects] == [
        ("openbmb/UltraFeedback[train] row 2", "nonfinite_score", "score 2 is nan, not a finite number (format 'sets_scores')")]


def test_ultrafeedback_overall_score_is_one_override_away(tmp_path):
    rows = [{"instruction": "q", "completions": [completion("a", "x", 8.0, 4.0, "4"), completion("b", "y", 3.0, 2.0, "2")]}]
    read = read_with_config("ultrafeedback_ratings", rows, tmp_path, overrides=["data.columns.response_score=overall_score"])
    assert read.sets["scores"] == [[8.0, 3.0]]


MULTI_TURN = "Write a haiku.\n<extra_id_1>Assistant\nLeaves fall...\n<extra_id_1>User\nAnother one, about snow."


def test_helpsteer2_groups_consecutive_rows_by_prompt_and_scores_helpfulness(tmp_path):
    rows = [  # nvidia/HelpSteer2: consecutive rows share a prompt
        {"prompt": "c#", "response": "C# is a language by Microsoft.", "helpfulness": 3, "correctness": 4, "coherence": 4,
         "complexity": 2, "verbosity": 1},
        {"prompt": "c#", "response": "A musical note.", "helpfulness": 1, "correctness": 2, "coherence": 4,
         "complexity": 1, "verbosity": 1},
        {"prompt": MULTI_TURN, "response": "Snow settles softly.", "helpfulness": 4, "correctness": 4, "coherence": 4,
         "complexity": 1, "verbosity": 2},
        {"prompt": MULTI_TURN, "response": "Snow settles softly.", "helpfulness": 4, "correctness": 4, "coherence": 3,
         "complexity": 1, "verbosity": 2},
    ]
    with pytest.raises(DataError, match=r"^nvidia/HelpSteer2\[train\] row 3 \+ row 4: all 2 responses are the same text"):
        read_with_config("helpsteer2", rows, tmp_path)
    read = read_with_config("helpsteer2", rows, tmp_path, overrides=["data.on_bad_row=skip"])
    assert read.format == "sets_from_rows"
    assert [(s["prompt"][0]["content"], s["responses"], s["scores"], s["origin"], s["correctness"]) for s in read.sets] == [
        ("c#", ["C# is a language by Microsoft.", "A musical note."], [3.0, 1.0], "nvidia/HelpSteer2[train] row 1 + row 2", "[4, 2]")]
    assert [(r["origin"], r["reason"]) for r in read.rejects] == [("nvidia/HelpSteer2[train] row 3 + row 4", "identical_responses")]


def test_rewardbench2_rows_score_every_chosen_one(tmp_path):
    metadata = {"category": None, "correct": None, "index": None, "instruction_id_list": None, "label": None, "method": None,
                "models": None, "prompt_norm": None, "subcategory": None, "valid": None}
    rows = [
        {"id": "1", "prompt": "Name a colour of the rainbow.", "chosen": ["Red.", "Blue."], "rejected": ["Pink.", "Black.", "Grey."],
         "num_correct": 2, "num_incorrect": 3, "total_completions": 5, "models": ["m"] * 5, "subset": "Ties",
         "additional_metadata": metadata},
        {"id": "2", "prompt": "Capital of France?", "chosen": ["Paris."], "rejected": ["Lyon.", "Nice.", "Rome."],
         "num_correct": 1, "num_incorrect": 3, "total_completions": 4, "models": ["m"] * 4, "subset": "Factuality",
         "additional_metadata": metadata},
    ]
    read = read_with_config("rewardbench2", rows, tmp_path, split="test")
    assert [(s["responses"], s["scores"], s["subset"], s["num_correct"]) for s in read.sets] == [
        (["Red.", "Blue.", "Pink.", "Black.", "Grey."], [1.0, 1.0, 0.0, 0.0, 0.0], "Ties", 2),
        (["Paris.", "Lyon.", "Nice.", "Rome."], [1.0, 0.0, 0.0, 0.0], "Factuality", 1)]
    assert read.rejects == []


def test_alpacaeval_sets_from_the_real_pairs(shared_data):
    test = shared_data / "alpacaeval_pairs_test.jsonl.gz"
    judge = "weighted_alpaca_eval_gpt4_turbo"
    pairs = [json.loads(line) for line in gzip.open(test, "rt")]
    source = AlpacaEvalSets(str(test), judge=judge)
    read = read_sets(source()["train"], str(test), "test")
    own = [p for p in pairs if p["judge"] == judge]
    assert read.stats["sets"] == len({p["prompt"] for p in own})
    assert read.stats["responses"] - read.stats["sets"] == len(own)  # every pair adds one output to its set
    first = read.sets[0]
    lines = [str(n) for n, p in enumerate(pairs, start=1) if p["judge"] == judge and p["prompt"] == first["prompt"][0]["content"]]
    assert first["origin"] == f"{test} lines {', '.join(lines)}"
    models = json.loads(first["models"])
    assert first["scores"][models.index(first["reference_model"])] == 0.5


def test_alpacaeval_sets_name_bad_lines_and_groups(tmp_path):
    pair = {"prompt": "p", "judge": "j", "chosen_model": "a", "rejected_model": "ref", "chosen": "A", "rejected": "R",
            "judge_confidence": 0.9}
    lines = [pair, {**pair, "chosen_model": "b", "chosen": "B", "judge_confidence": 0.7},
             {**pair, "prompt": "q"}, {**pair, "prompt": "q", "chosen_model": "c", "rejected_model": "d"}]
    file = tmp_path / "pairs.jsonl"
    file.write_text("\n".join(json.dumps(p) for p in lines) + '\n{broken\n{"prompt": "x"}\n', encoding="utf-8")
    read = read_sets(AlpacaEvalSets(str(file))()["train"], str(file), "train", on_bad_row="skip")
    assert (read.sets["responses"], read.sets["scores"], read.sets["origin"]) == (
        [["A", "B", "R"]], [[0.9, 0.7, 0.5]], [f"{file} lines 1, 2"])
    assert [(r["origin"], r["reason"]) for r in read.rejects] == [
        (f"{file} line 5", "unreadable"), (f"{file} line 6", "missing_column"), (f"{file} lines 3, 4", "no_reference")]
    assert read.rejects[1]["problem"] == ("not an AlpacaEval pair: missing ['judge', 'chosen', 'rejected', 'chosen_model', "
                                          "'rejected_model', 'judge_confidence']")
    assert read.rejects[2]["problem"] == "'q' (j): no model is in all 2 pairs, so there is no reference"


def test_synthetic_sets_source_splits_by_prompt():
    splits = SyntheticSets(k=3, n_train=60, n_val=20, n_test=20, seed=1, length_bias=0.2)()
    read = {name: read_sets(ds, f"synthetic_sets[{name}]", name) for name, ds in splits.items()}
    assert {name: (r.stats["sets"], r.stats["k_min"], r.stats["k_max"]) for name, r in read.items()} == {
        "train": (60, 3, 3), "val": (20, 3, 3), "test": (20, 3, 3)}
    keys = {name: set(r.sets["prompt_key"]) for name, r in read.items()}
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    assert all(sorted(scores) == [0.0, 0.0, 1.0] for r in read.values() for scores in r.sets["scores"])
    assert not math.isnan(sum(map(sum, read["train"].sets["scores"])))
