"""read_sets: response sets from real files and hub-like rows, every bad row stopped with its line or
counted under its reason; one-response rows grouped into sets."""

import json
import logging

import pytest
from datasets import Dataset

from rmlab.data.formats import prompt_key
from rmlab.data.set_reader import read_sets
from rmlab.data.sources import LocalFiles
from rmlab.errors import DataError

GOOD = {"prompt": "What is 2 + 2?", "responses": ["4", "5", "four"], "scores": [1, 0, 1], "subset": "math"}
BAD = [  # (row, reason), one per line after the good ones
    ({"prompt": "q", "responses": ["a", "a"], "scores": [1, 0]}, "identical_responses"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, None]}, "missing_score"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, "NaN"]}, "nonfinite_score"),
    ({"prompt": "q", "responses": ["a", "b"], "scores": [1, 1e39]}, "score_beyond_float32"),
    ({"prompt": "q", "responses": ["a", "b", "c"], "scores": [1, 0]}, "count_mismatch"),
    ({"prompt": "q", "responses": ["a"], "scores": [1]}, "too_few_responses"),
    ({"prompt": "q", "responses": ["a", "b"], "ranking": [1, 1]}, "missing_column"),  # format is sets_scores here
]


def write_jsonl(path, rows, extra_lines=()):
    lines = [json.dumps(row) for row in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def local(path):
    return LocalFiles(str(path))()["train"]


def test_every_bad_row_stops_the_run_with_its_line(tmp_path):
    file = write_jsonl(tmp_path / "sets.jsonl", [GOOD, BAD[0][0]])
    with pytest.raises(DataError) as error:
        read_sets(local(file), str(file), "train")
    assert str(error.value) == (f"{file} line 2: all 2 responses are the same text (format 'sets_scores'). "
                                "data.on_bad_row=skip skips such rows (counted, and written to data.rejects_file)")


def test_skip_counts_each_reason_and_keeps_the_rows(tmp_path, caplog):
    file = write_jsonl(tmp_path / "sets.jsonl", [GOOD, *(row for row, _ in BAD), {**GOOD, "subset": "other"}],
                       extra_lines=["{not json"])
    with caplog.at_level(logging.WARNING, logger="rmlab.data.set_reader"):
        read = read_sets(local(file), str(file), "train", on_bad_row="skip")
    assert read.format == "sets_scores"
    assert read.sets.to_list() == [
        {"prompt": [{"role": "user", "content": "What is 2 + 2?", "fields": None}], "responses": ["4", "5", "four"],
         "scores": [1.0, 0.0, 1.0], "prompt_key": prompt_key([{"role": "user", "content": "What is 2 + 2?"}]),
         "origin": f"{file} line {line}", "subset": subset} for line, subset in ((1, "math"), (len(BAD) + 2, "other"))]
    reasons = [reason for _, reason in BAD] + ["unreadable"]
    assert [(r["origin"], r["reason"]) for r in read.rejects] == [(f"{file} line {n}", reason) for n, reason in
                                                                  zip([*range(2, len(BAD) + 2), len(BAD) + 3], reasons)]
    assert read.rejects[-1]["problem"].startswith("not valid JSON")
    assert read.stats == {"sets": 2, "responses": 6, "k_min": 3, "k_max": 3, "all_tied": 0, "rejected": len(reasons),
                          **{f"rejected_{reason}": 1 for reason in reasons}}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(reasons)  # one line per reason, with its count and first row
    assert f"train: skipped 1 rows (identical_responses; data.on_bad_row=skip), first: {file} line 2: all 2 responses " \
           "are the same text (format 'sets_scores')" in warnings


def test_format_named_in_config_reads_every_row_in_it(tmp_path):
    ranked = {"prompt": "q", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}
    file = write_jsonl(tmp_path / "sets.jsonl", [ranked, GOOD])
    read = read_sets(local(file), str(file), "val", format="sets_ranking", on_bad_row="skip")
    assert read.sets["scores"] == [[1.0, 0.0, 2.0]]
    assert [(r["reason"], r["problem"]) for r in read.rejects] == [("missing_column", "missing 'ranking' (format 'sets_ranking')")]


def test_every_row_rejected_or_none_at_all(tmp_path):
    file = write_jsonl(tmp_path / "sets.jsonl", [BAD[0][0]])
    with pytest.raises(DataError, match=rf"^{file}: every row was rejected \(first: {file} line 1: all 2 responses"):
        read_sets(local(file), str(file), "train", on_bad_row="skip")
    with pytest.raises(DataError, match="^empty: no rows"):
        read_sets(Dataset.from_dict({"prompt": []}), "empty", "train")


def test_hub_rows_are_named_by_row_and_renamed_columns_are_read():
    rows = [{"question": "Pick a colour of the rainbow.", "good": ["red", "blue"], "bad": ["pink", "black", "grey"],
             "subset": "Ties"},
            {"question": "2 + 2?", "good": ["4"], "bad": ["4"], "subset": "Math"}]
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    read = read_sets(Dataset.from_list(rows), "hub[test]", "test", columns=columns, on_bad_row="skip")
    assert read.format == "sets_chosen_rejected"
    assert (read.sets["responses"], read.sets["scores"], read.sets["subset"]) == (
        [["red", "blue", "pink", "black", "grey"]], [[1.0, 1.0, 0.0, 0.0, 0.0]], ["Ties"])
    assert [(r["origin"], r["reason"]) for r in read.rejects] == [("hub[test] row 2", "identical_responses")]


HELPSTEER = [  # one response per row, attribute columns; the rows of a prompt form a set
    {"prompt": "Name a fruit.", "response": "An apple.", "helpfulness": 4, "correctness": 4},
    {"prompt": "Say hi.", "response": "Hi!", "helpfulness": 3, "correctness": 4},
    {"prompt": "Name a fruit.", "response": "A carrot.", "helpfulness": 1, "correctness": 0},
    {"prompt": "Say hi.", "response": "Hello!", "helpfulness": None, "correctness": 4},
    {"prompt": "Name a fruit.", "response": "A pear.", "helpfulness": 4, "correctness": 3},
]


def test_one_response_rows_group_into_sets_by_prompt(tmp_path):
    file = write_jsonl(tmp_path / "helpsteer.jsonl", HELPSTEER)
    columns = {"score": "helpfulness"}
    read = read_sets(local(file), str(file), "train", format="sets_from_rows", columns=columns, on_bad_row="skip")
    assert read.sets.to_list() == [{
        "prompt": [{"role": "user", "content": "Name a fruit.", "fields": None}],
        "responses": ["An apple.", "A carrot.", "A pear."], "scores": [4.0, 1.0, 4.0],
        "prompt_key": prompt_key([{"role": "user", "content": "Name a fruit."}]),
        "origin": f"{file} line 1 + line 3 + line 5", "correctness": "[4, 0, 3]"}]
    # Line 4 has no helpfulness: set aside alone; "Say hi." is then left with one response.
    assert [(r["origin"], r["reason"]) for r in read.rejects] == [(f"{file} line 4", "missing_score"),
                                                                  (f"{file} line 2", "too_few_responses")]
    assert read.stats["rejected"] == 2 and read.stats["sets"] == 1
    with pytest.raises(DataError, match=rf"^{file} line 4: missing 'helpfulness' \(format 'sets_from_rows'\)"):
        read_sets(local(file), str(file), "train", format="sets_from_rows", columns=columns)


def test_grouped_rows_on_the_hub_and_a_contradiction():
    rows = [{"prompt": "p", "response": "x", "score": 1}, {"prompt": "p", "response": "y", "score": 0},
            {"prompt": "p", "response": "x", "score": 2}]
    with pytest.raises(DataError, match=r"^hub\[train\] row 1 \+ row 2 \+ row 3: responses 1 and 3 are the same text "
                                        r"with different scores \(1.0, 2.0\)"):
        read_sets(Dataset.from_list(rows), "hub[train]", "train")


def test_bad_settings_are_refused():
    rows = Dataset.from_list([GOOD])
    with pytest.raises(ValueError, match=r"data.format='chat'; choose 'auto' or one of \('sets_scores'"):
        read_sets(rows, "x", "train", format="chat")
    with pytest.raises(ValueError, match=r"data.on_bad_row='drop'"):
        read_sets(rows, "x", "train", on_bad_row="drop")
    with pytest.raises(ValueError, match=r"unknown data.columns.answer for response sets"):
        read_sets(rows, "x", "train", columns={"answer": "a"})


def test_turn_markers_give_grouped_rows_a_chat_prompt():
    text = "Hi.\n<extra_id_1>Assistant\nHello!\n<extra_id_1>User\nName a fruit."
    rows = [{"prompt": text, "response": "Pear.", "helpfulness": 4}, {"prompt": text, "response": "Rock.", "helpfulness": 0}]
    markers = {"user": "<extra_id_1>User", "assistant": "<extra_id_1>Assistant"}
    read = read_sets(Dataset.from_list(rows), "hub[train]", "train", format="sets_from_rows",
                     columns={"score": "helpfulness"}, turn_markers=markers)
    assert [(m["role"], m["content"]) for m in read.sets[0]["prompt"]] == [
        ("user", "Hi."), ("assistant", "Hello!"), ("user", "Name a fruit.")]
    assert (read.sets["responses"], read.sets["scores"]) == ([["Pear.", "Rock."]], [[4.0, 0.0]])


def test_tied_sets_are_kept_and_counted_and_mixed_metadata_becomes_text():
    rows = [{"prompt": "p", "responses": ["a", "b"], "scores": [2, 2], "note": 7},
            {"prompt": "q", "responses": ["a", "b", "c"], "scores": [2, 1, 2], "note": "seven"},
            {"prompt": "r", "responses": ["a", "b"], "scores": [0.5, 0.5]}]
    read = read_sets(Dataset.from_list(rows[:1]), "one", "train")
    assert read.sets["note"] == [7]
    read = read_sets(_jsonl_dataset(rows), "three", "train")
    assert (read.stats["all_tied"], read.stats["k_min"], read.stats["k_max"], read.stats["responses"]) == (2, 2, 3, 7)
    assert read.sets["note"] == ["7", "seven", None]


def _jsonl_dataset(rows):
    """Rows as LocalFiles gives them (each row's JSON text), so rows may differ in fields and types."""
    return Dataset.from_list([{"origin": f"rows.jsonl line {n}", "raw": json.dumps(row), "problem": None}
                              for n, row in enumerate(rows, start=1)])
