"""The DataModule on response sets (K responses per prompt): detection, bad rows, tokenization rules, batches."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rmlab.data.batch import is_set_batch
from rmlab.errors import DataError

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


def test_set_format_named_and_a_pairs_file_stays_pairs(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SETS), format="sets_scores", tokenizer=MINILM)
    assert dm.sets is True
    pairs = [{"prompt": "p", "chosen": "good", "rejected": "bad"}] * 3
    dm = datamodule(write_jsonl(tmp_path / "pairs.jsonl", pairs))
    assert dm.sets is False and dm.stats["train"]["pairs"] == 3


# Sets of 2 to 5 responses (the K of each set is its place in the list mod 4, plus 2): a set split across
# ranks, or cut at a batch boundary, would show as a set with fewer responses than its stored row.
MANY_SETS = [{"prompt": f"Question {n}?", "responses": [f"answer {n} {words(i + 1, 'more')}" for i in range(n % 4 + 2)],
              "scores": [float(i) for i in range(n % 4 + 2)]} for n in range(16)]


def train_batches(dm, world: int, rank: int, global_step: int = 0, batches_per_epoch: float = float("inf")) -> list[dict]:
    """The train loader's batches on one rank; a stand-in for the Trainer fields the DataModule reads."""
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, global_step=global_step,
                                 num_training_batches=batches_per_epoch, accumulate_grad_batches=1)
    return list(dm.train_dataloader())


def whole_sets(dm, batch: dict) -> list[int]:
    """The stored set indices of a batch, after checking that each came with all its responses and scores."""
    stored = dm.splits["train"]
    for b, index in enumerate(batch["index"].tolist()):
        k = len(stored[index]["input_ids"])
        assert batch["response_mask"][b].sum() == k and batch["scores"][b, :k].tolist() == stored[index]["scores"]
        rows = batch["set_rows"][b, :k].tolist()
        got = [[t for t, m in zip(batch["input_ids"][r].tolist(), batch["attention_mask"][r].tolist()) if m] for r in rows]
        assert got == stored[index]["input_ids"]
    return batch["index"].tolist()


def test_ranks_get_whole_sets_and_together_the_one_process_batches(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", MANY_SETS), packing="none", batch_size=2)
    per_rank = [[whole_sets(dm, b) for b in train_batches(dm, world=2, rank=rank)] for rank in (0, 1)]
    dm.batch_size = 4
    single = [whole_sets(dm, b) for b in train_batches(dm, world=1, rank=0)]
    assert len(single) == 4 and [len(b) for b in single] == [4] * 4
    # step by step the two ranks' sets are the one process's sets of twice the batch, dealt out alternately
    assert per_rank == [[b[0::2] for b in single], [b[1::2] for b in single]]
    assert sorted(i for b in single for i in b) == list(range(16))


def test_a_resumed_set_epoch_trains_the_sets_not_yet_trained(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", MANY_SETS), packing="none", batch_size=2)
    fresh = [[whole_sets(dm, b) for b in train_batches(dm, world=2, rank=rank)] for rank in (0, 1)]
    # resumed at step 3 of an epoch of 4 steps: each rank trains its last batch only
    resumed = [[whole_sets(dm, b) for b in train_batches(dm, world=2, rank=rank, global_step=3, batches_per_epoch=4)]
               for rank in (0, 1)]
    assert resumed == [fresh[0][3:], fresh[1][3:]]
