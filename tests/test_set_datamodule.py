"""The DataModule on response sets (K responses per prompt): detection, bad rows, tokenization rules, batches."""

from __future__ import annotations

import json

import pytest

from rmlab.data.batch import is_set_batch
from rmlab.errors import ConfigError, DataError

from test_datamodule import MINILM, datamodule, words, write_jsonl

SETS = [
    {"prompt": "Add 2 and 3.", "responses": ["5", "6", "It is 7"], "scores": [1.0, 0.0, 0.0]},
    {"prompt": "Name a colour.", "responses": ["red", "blue", "a car", "seven"], "scores": [2, 2, 0, 1]},  # a tie at the top
    {"prompt": "Say hi.", "responses": ["hi", "bye"], "scores": [1, 0]},
]


def test_a_sets_file_is_detected_and_batched_as_sets(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SETS), packing="none", batch_size=3)
    assert dm.sets is True
    assert {k: dm.stats["train"][k] for k in ("sets", "responses", "k_min", "k_max", "rejected", "dropped")} == \
        {"sets": 3, "responses": 9, "k_min": 2, "k_max": 4, "rejected": 0, "dropped": 0}
    batch = next(iter(dm.val_dataloader()))  # longest set first
    assert is_set_batch(batch)
    assert batch["scores"].tolist() == [[2.0, 2.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert batch["response_mask"].sum(dim=1).tolist() == [4, 3, 2]
    assert batch["set_rows"].tolist() == [[0, 1, 2, 3], [4, 5, 6, -1], [7, 8, -1, -1]]
    assert len(batch["input_ids"]) == 9  # one padded row per response, none for absent ones


def test_a_bad_set_names_its_line_or_is_counted_when_skipped(tmp_path):
    rows = SETS + [{"prompt": "Again?", "responses": ["yes", "yes"], "scores": [1, 0]},            # line 4
                   {"prompt": "Score?", "responses": ["a", "b"], "scores": [1, float("nan")]}]     # line 5
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=r"bad.jsonl line 4: .*same text"):
        datamodule(path)
    dm = datamodule(path, on_bad_row="skip", rejects_file=str(tmp_path / "rejects.jsonl"))
    assert dm.stats["train"]["sets"] == 3 and dm.stats["train"]["rejected"] == 2
    rejected = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["origin"].rsplit(" ", 1)[-1] for r in rejected if r["split"] == "train") == ["4", "5"]


def test_responses_of_different_scores_that_tokenize_alike_make_a_bad_set(tmp_path):
    # MiniLM reads both emoji as [UNK]: the two replies become the same ids
    rows = SETS + [{"prompt": "Pick one.", "responses": ["\U0001F600", "\U0001F641", "none"], "scores": [1, 0, 0]}]
    path = write_jsonl(tmp_path / "emoji.jsonl", rows)
    with pytest.raises(DataError, match=r"emoji.jsonl line 4: two responses with different scores become the same token ids"):
        datamodule(path)
    dm = datamodule(path, on_bad_row="skip")
    assert (dm.stats["train"]["sets"], dm.stats["train"]["same_ids"], dm.stats["train"]["rejected"]) == (3, 1, 1)


def test_an_over_long_set_is_truncated_once_for_all_its_responses_or_dropped(tmp_path):
    rows = SETS + [{"prompt": words(30, "one"), "responses": [words(3, "two"), words(5, "three")], "scores": [1, 0]}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    dm = datamodule(path, max_length=20, overlong="truncate", packing="none")
    long_set = dm.splits["train"][3]["input_ids"]
    assert [len(ids) for ids in long_set] == [18, 20]   # [CLS] 12 prompt tokens [SEP] reply [SEP]: one prompt cut
    assert long_set[0][:14] == long_set[1][:14]
    assert dm.stats["train"]["truncated_prompt"] == 1
    dm = datamodule(path, max_length=20, overlong="drop")
    assert (dm.stats["train"]["sets"], dm.stats["train"]["dropped"]) == (3, 1)


def test_pair_only_options_are_refused_for_sets(tmp_path):
    path = write_jsonl(tmp_path / "sets.jsonl", SETS)
    with pytest.raises(ConfigError, match="data.length_matched works on pairs; this data is response sets"):
        datamodule(path, length_matched=True)
    with pytest.raises(ConfigError, match="data.augment works on pairs"):
        datamodule(path, augment={"share": 0.5, "kinds": ["filler"]})


def test_set_format_named_and_a_pairs_file_stays_pairs(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SETS), format="sets_scores", tokenizer=MINILM)
    assert dm.sets is True
    pairs = [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 3
    dm = datamodule(write_jsonl(tmp_path / "pairs.jsonl", pairs))
    assert dm.sets is False and dm.stats["train"]["pairs"] == 3
