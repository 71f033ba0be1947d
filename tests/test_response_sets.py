"""Response-set rows in each layout, their bad-row rules, and the AlpacaEval pairs grouped into sets."""

import gzip
import json

import pytest

from rmlab.data.formats import detect_format, to_pair
from rmlab.data.response_sets import (
    REASONS,
    SetFormatError,
    alpacaeval_sets,
    expand_to_pairs,
    is_set_row,
    main,
    split_turns,
    to_response_set,
)

from conftest import SHARED_DATA, run_cli

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


@pytest.mark.parametrize("row, reason, problem", [
    ({"prompt": "q", "responses": ["a"], "scores": [1]}, "too_few_responses", "a response set needs at least 2 responses, got 1"),
    ({"prompt": "q", "responses": ["a", "a"], "scores": [1, 0]}, "identical_responses", "all 2 responses are the same text"),
    ({"prompt": "q", "responses": ["a", "b", "a"], "scores": [1, 0, 0]}, "duplicate_responses",
     "responses 1 and 3 are the same text with different scores (1.0, 0.0)"),
    ({"prompt": "q", "responses": ["a", " "], "scores": [1, 0]}, "empty_response", "response 2 is empty (whitespace only)"),
    ({"prompt": "q", "responses": ["a", 3], "scores": [1, 0]}, "bad_response", "response 2 is a int, not a string"),
    ({"prompt": "q", "responses": ["a", {"text": "b"}], "scores": [1, 0]}, "bad_response",
     "response 2 is an object with fields ['text']: name the field holding its text with data.columns.response_text"),
    ({"prompt": "q", "responses": ["a", {"role": "user", "content": "b"}], "scores": [1, 0]}, "bad_response",
     "response 2 does not end with an assistant message"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1]}, "count_mismatch", "column 'scores' must give one score per response (2), got 1"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, None]}, "missing_score", "score 2 is missing"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, "N/A"]}, "bad_score", "score 2 is not a number: 'N/A'"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, True]}, "bad_score", "score 2 is not a number: True"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, float("nan")]}, "nonfinite_score", "score 2 is nan, not a finite number"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, "-inf"]}, "nonfinite_score", "score 2 is -inf, not a finite number"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, 1e39]}, "score_beyond_float32",
     "score 2 is 1e+39, beyond float32's largest value (3.403e+38)"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [0, 0]}, "bad_ranking",
     "column 'ranking' must list every response index (0..1) once, best first; got [0, 0]"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": ["1", "0"]}, "bad_ranking", "column 'ranking' must list every response index"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [0]}, "count_mismatch", "column 'ranking' must list each of the 2 responses once"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [{"x": 1}, {"x": 2}]}, "bad_score", "score 1 is a dict of attributes ['x']"),
    ({"prompt": "q", "responses": ["a", "b"]}, "missing_column", "cannot detect the response-set layout from columns ['prompt', 'responses']"),
    ({"responses": ["a", "b"], "scores": [1, 0]}, "missing_column", "missing 'prompt'"),
    ({"prompt": 7, "responses": ["a", "b"], "scores": [1, 0]}, "bad_prompt", "column 'prompt' must be a string or a non-empty list"),
    (["q", "a", "b"], "unreadable", "expected an object with named fields, got list"),
])
def test_bad_sets_are_named_with_their_reason(row, reason, problem):
    with pytest.raises(SetFormatError) as error:
        to_response_set(row)
    assert (error.value.reason, str(error.value)[:len(problem)]) == (reason, problem)
    assert reason in REASONS


def test_attribute_scores_missing_the_chosen_attribute():
    row = {"prompt": "q", "responses": ["a", "b"], "scores": [{"x": 1}, {"y": 2}]}
    with pytest.raises(SetFormatError, match=r"^score 2 has no attribute 'x' \('x' not in \['y'\]\)") as error:
        to_response_set(row, score_key="x")
    assert error.value.reason == "missing_score"


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
    one_judge = [json.loads(line) for line in gzip.open(out, "rt")]
    assert len(one_judge) == 146 and {s["judge"] for s in one_judge} == {"weighted_alpaca_eval_gpt4_turbo"}  # data=alpacaeval_sets'
    assert result.stdout.startswith(f"146 response sets from {source} -> {out} (judge weighted_alpaca_eval_gpt4_turbo;")
    main(["alpacaeval", str(source), str(out), "judge=all"])
    sets = [json.loads(line) for line in gzip.open(out, "rt")]
    pairs = sum(1 for _ in gzip.open(source, "rt"))
    assert sum(len(s["responses"]) - 1 for s in sets) == pairs == 1168  # every pair adds one output to a set
    with pytest.raises(SystemExit, match=r"no pair judged by 'gpt5'; its judges: \['alpaca_eval_gpt4', 'weighted_alpaca_eval_gpt4_turbo'\]"):
        main(["alpacaeval", str(source), str(out), "judge=gpt5"])
    for response_set in sets:
        checked = to_response_set(response_set)
        assert len(checked["responses"]) >= 2 and checked["scores"][response_set["models"].index(response_set["reference_model"])] == 0.5


def assistant(text):
    return {"role": "assistant", "content": text}


def test_responses_as_assistant_messages_or_conversations():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"}]
    as_messages = {"prompt": prompt, "responses": [assistant("4"), assistant("5")], "scores": [1, 0]}
    conversations = {"responses": [prompt + [assistant("4")], prompt + [assistant("5")]], "scores": [1, 0]}
    expected = {"prompt": prompt, "responses": ["4", "5"], "scores": [1.0, 0.0]}
    assert to_response_set(as_messages) == to_response_set(conversations) == expected
    assert to_response_set({**conversations, "prompt": prompt}) == expected  # a prompt column agreeing with them
    other = {**conversations, "responses": [prompt + [assistant("4")], prompt[1:] + [assistant("5")]]}
    with pytest.raises(SetFormatError, match=r"^response 2: the conversation before its reply is not the prompt") as error:
        to_response_set(other)
    assert error.value.reason == "bad_response"


def test_scores_from_strings_dotted_attributes_and_response_objects():
    row = {"prompt": "q", "responses": ["a", "b"], "scores": [" 4.5", "-1"]}
    assert to_response_set(row)["scores"] == [4.5, -1.0]
    nested = {"prompt": "q", "responses": ["a", "b"],
              "scores": [{"helpfulness": {"Rating": "4"}}, {"helpfulness": {"Rating": "2"}}]}
    assert to_response_set(nested, score_key="helpfulness.Rating")["scores"] == [4.0, 2.0]
    objects = {"question": "q", "completions": [{"text": "a", "rating": {"overall": 7}}, {"text": "b", "rating": {"overall": 3}}]}
    columns = {"prompt": "question", "responses": "completions", "response_text": "text", "response_score": "rating.overall"}
    assert to_response_set(objects, columns) == {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"],
                                                 "scores": [7.0, 3.0]}
    with pytest.raises(SetFormatError, match=r"^response 2 has no field 'text' \(it has \['body'\]\)"):
        to_response_set({**objects, "completions": [objects["completions"][0], {"body": "b"}]}, columns)


def test_one_response_rows_read_attributes_from_the_row_itself():
    row = {"prompt": "q", "response": "a", "helpfulness": 3, "correctness": 4, "verbosity": 2}
    weights = {"helpfulness": 0.5, "correctness": 1.0, "verbosity": -0.5}
    out = to_response_set(row, {"score": None}, score_weights=weights, fmt="sets_from_rows")
    assert out == {"prompt": [{"role": "user", "content": "q"}], "responses": ["a"], "scores": [1.5 + 4.0 - 1.0]}
    assert to_response_set(row, {"score": "correctness"}, fmt="sets_from_rows")["scores"] == [4.0]


MARKERS = {"user": "<extra_id_1>User", "assistant": "<extra_id_1>Assistant"}


def test_turn_markers_split_a_prompt_string_into_chat_turns():
    text = "Write a haiku.\n<extra_id_1>Assistant\nLeaves fall...\n<extra_id_1>User\nAnother one, about snow."
    turns = [{"role": "user", "content": "Write a haiku."}, {"role": "assistant", "content": "Leaves fall..."},
             {"role": "user", "content": "Another one, about snow."}]
    assert split_turns(text, MARKERS) == turns
    assert split_turns("c#", MARKERS) == [{"role": "user", "content": "c#"}]
    row = {"prompt": text, "responses": ["Snow.", "Rain."], "scores": [1, 0]}
    assert to_response_set(row, turn_markers=MARKERS)["prompt"] == turns
    assert to_response_set(row)["prompt"] == [{"role": "user", "content": text}]  # without markers: one user turn
    with pytest.raises(SetFormatError, match=r"^turn marker role 'human' is not one of"):
        split_turns(text, {"human": "H:"})


def test_a_set_expands_into_its_preference_pairs_ties_left_out():
    response_set = {"prompt": PROMPT, "responses": ["4", "5", "four", "22"], "scores": [1.0, 0.0, 1.0, 0.25]}
    pairs, ties = expand_to_pairs(response_set)
    assert ties == 1  # "4" and "four"
    assert [(p["chosen"], p["rejected"], p["score_gap"]) for p in pairs] == [
        ("4", "5", 1.0), ("4", "22", 0.75), ("four", "5", 1.0), ("22", "5", 0.25), ("four", "22", 0.75)]
    assert all(p["prompt"] == PROMPT for p in pairs)


@pytest.mark.e2e
def test_pairs_command_writes_every_pair_and_names_a_bad_line(tmp_path):
    sets = tmp_path / "sets.jsonl"
    sets.write_text(json.dumps({"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}) + "\n"
                    + json.dumps({"prompt": "r", "chosen": ["x", "y"], "rejected": ["z"]}) + "\n", encoding="utf-8")
    out = tmp_path / "pairs.jsonl.gz"
    command = ["pairs", str(sets), str(out)]
    result = run_cli("rmlab.data.response_sets", command, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"5 pairs from 2 response sets in {sets} -> {out} (1 tied pairs left out)\n"
    pairs = [json.loads(line) for line in gzip.open(out, "rt")]
    assert [(p["chosen"], p["rejected"], p["score_gap"], p["set_origin"]) for p in pairs] == [
        ("a", "b", 1.0, "line 1"), ("c", "a", 1.0, "line 1"), ("c", "b", 2.0, "line 1"),
        ("x", "z", 1.0, "line 2"), ("y", "z", 1.0, "line 2")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "q"}]
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}  # the pair path reads them as they are
    assert to_pair(pairs[0], detect_format(pairs[0], columns), columns) == {"prompt": pairs[0]["prompt"], "chosen": "a", "rejected": "b"}
    with sets.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"prompt": "s", "responses": ["a", "a"], "scores": [1, 0]}) + "\n")
    result = run_cli("rmlab.data.response_sets", command, tmp_path, timeout=120)
    assert result.returncode == 1 and result.stderr == f"{sets} line 3: all 2 responses are the same text\n"


@pytest.mark.parametrize("row, is_set", [
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, 0]}, True),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [1, 0]}, True),
    ({"prompt": "q", "chosen": ["a"], "rejected": ["b", "c"]}, True),
    ({"prompt": "q", "response": "a", "score": 3}, True),
    ({"prompt": "q", "chosen": "a", "rejected": "b"}, False),  # prompt_response pair
    ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, False),  # hh pair
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}, False),  # chat pair
    ("not a row", False),
])
def test_set_rows_and_pair_rows_are_told_apart(row, is_set):
    assert is_set_row(row) == is_set
