"""Response-set rows in each layout, their bad-row rules, and the AlpacaEval pairs grouped into sets."""

import gzip
import json

import pytest

from conftest import SHARED_DATA, run_cli
from rmlab.data.formats import PairFormatError
from rmlab.data.response_sets import alpacaeval_sets, to_response_set

PROMPT = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.mark.parametrize("row, scores", [
    ({"prompt": "What is 2 + 2?", "responses": ["4", "5", "four"], "scores": [1, 0, 1]}, [1.0, 0.0, 1.0]),
    ({"prompt": "What is 2 + 2?", "responses": ["4", "5", "four"], "ranking": [2, 0, 1]}, [1.0, 0.0, 2.0]),
    ({"prompt": "What is 2 + 2?", "chosen": ["4", "four"], "rejected": ["5"]}, [1.0, 1.0, 0.0]),
    ({"prompt": "What is 2 + 2?", "responses": ["4", "5", "four"],
      "scores": [{"correct": 4, "style": 1}, {"correct": 0, "style": 4}, {"correct": 4, "style": 3}]}, [4.0, 0.0, 4.0]),
])
def test_each_layout_gives_the_set(row, scores):
    out = to_response_set(row, score_key="correct")
    responses = ["4", "four", "5"] if "chosen" in row else ["4", "5", "four"]
    assert out == {"prompt": PROMPT, "responses": responses, "scores": scores}


def test_attribute_scores_combine_by_weights():
    row = {"prompt": "q", "responses": ["a", "b"], "scores": [{"x": 1, "y": 2}, {"x": 3, "y": 0}]}
    assert to_response_set(row, score_weights={"x": 0.5, "y": 2.0})["scores"] == [4.5, 1.5]


@pytest.mark.parametrize("row, problem", [
    ({"prompt": "q", "responses": ["a"], "scores": [1]}, "a response set needs at least 2 responses, got 1"),
    ({"prompt": "q", "responses": ["a", "a"], "scores": [1, 0]}, "all 2 responses are the same text"),
    ({"prompt": "q", "responses": ["a", " "], "scores": [1, 0]}, "response 2 is empty"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1]}, "column 'scores' must give one score per response (2)"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, None]}, "score 2 is not a number: None"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, float("nan")]}, "score 2 is nan, not a finite float32 number"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, 1e39]}, "score 2 is 1e+39, not a finite float32 number"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}, "column 'ranking' must list every response index once"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [{"x": 1}, {"x": 2}]}, "score 1 is a dict of attributes ['x']"),
    ({"prompt": "q", "responses": ["a", "b"]}, "responses without 'scores' or 'ranking'"),
    ({"responses": ["a", "b"], "scores": [1, 0]}, "missing 'prompt'"),
])
def test_bad_sets_are_named(row, problem):
    with pytest.raises(PairFormatError) as error:
        to_response_set(row)
    assert str(error.value).startswith(problem)


PAIRS = [  # one prompt, one judge, reference "ref" against three outputs
    {"prompt": "p", "judge": "j", "chosen_model": "a", "rejected_model": "ref", "chosen": "A", "rejected": "R", "judge_confidence": 0.9},
    {"prompt": "p", "judge": "j", "chosen_model": "ref", "rejected_model": "b", "chosen": "R", "rejected": "B", "judge_confidence": 0.8},
    {"prompt": "p", "judge": "j", "chosen_model": "c", "rejected_model": "ref", "chosen": "C", "rejected": "R", "judge_confidence": 1.0},
]


def test_alpacaeval_pairs_group_into_sets_with_win_probabilities():
    assert alpacaeval_sets(PAIRS) == [{"prompt": "p", "responses": ["A", "B", "C", "R"], "scores": [0.9, pytest.approx(0.2), 1.0, 0.5],
                                       "models": ["a", "b", "c", "ref"], "reference_model": "ref", "judge": "j"}]
    with pytest.raises(ValueError, match="no model is in all 2 pairs"):
        alpacaeval_sets([PAIRS[0], {**PAIRS[1], "chosen_model": "x", "rejected_model": "b"}])


@pytest.mark.e2e
def test_alpacaeval_conversion_of_the_real_test_pairs(tmp_path):
    source = SHARED_DATA / "alpacaeval_pairs_test.jsonl.gz"
    if not source.is_file():
        pytest.skip(f"real preference data not found at {SHARED_DATA}")
    out = tmp_path / "sets.jsonl.gz"
    result = run_cli("rmlab.data.response_sets", ["alpacaeval", str(source), str(out)], tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    sets = [json.loads(line) for line in gzip.open(out, "rt")]
    pairs = sum(1 for _ in gzip.open(source, "rt"))
    assert sum(len(s["responses"]) - 1 for s in sets) == pairs == 1168  # every pair adds one output to a set
    assert result.stdout.startswith(f"{len(sets)} response sets from {source}")
    for response_set in sets:
        checked = to_response_set(response_set)
        assert len(checked["responses"]) >= 2 and checked["scores"][response_set["models"].index(response_set["reference_model"])] == 0.5
