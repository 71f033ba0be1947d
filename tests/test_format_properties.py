"""Property-based tests (hypothesis) of the file readers and pair-format parsers: any text survives
a round trip through every file type; well-formed HH and chat pairs are split exactly; anything
else is refused with PairFormatError (a row problem), never another exception."""

import csv
import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rmlab.data.files import read_file_rows
from rmlab.data.formats import FORMATS, PairFormatError, check_pair, detect_format, read_margin, to_pair

COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": None}
FILE_TEST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any Unicode text (no lone surrogates: they cannot be written as UTF-8), with something besides whitespace.
text = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(lambda t: t.strip())
no_markers = text.filter(lambda t: "Human:" not in t and "Assistant:" not in t)
pair_texts = st.tuples(text, text, text).filter(lambda p: p[1] != p[2])


def write(tmp_path, kind: str, rows: list[dict]):
    path = tmp_path / f"pairs{kind}"
    if kind == ".jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()))
    elif kind == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif kind == ".csv":
        out = io.StringIO(newline="")
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        path.write_bytes(out.getvalue().encode())
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@FILE_TEST
@given(st.lists(pair_texts, min_size=1, max_size=5), st.sampled_from([".jsonl.gz", ".json", ".csv", ".parquet"]))
def test_any_text_round_trips_through_every_file_type(tmp_path, pairs, kind):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs]
    read = list(read_file_rows(write(tmp_path, kind, rows)))
    assert [row.problem for row in read] == [None] * len(rows)
    assert [to_pair(row.data, "prompt_response", COLUMNS) for row in read] == [
        {"prompt": [{"role": "user", "content": p}], "chosen": c, "rejected": r} for p, c, r in pairs]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=30), min_size=1, max_size=8))
def test_jsonl_reader_gives_every_non_blank_line_a_row_or_a_problem(tmp_path_factory, lines):
    lines = [line.replace(b"\n", b" ") for line in lines]
    path = tmp_path_factory.mktemp("bytes") / "rows.jsonl"
    path.write_bytes(b"\n".join(lines))
    read = list(read_file_rows(path))  # never raises on a bad line
    expected = [f"line {n}" for n, line in enumerate(lines, start=1) if line.strip()]
    assert [row.location for row in read] == expected
    for row in read:
        assert (row.problem is None) or row.problem.startswith(("not valid UTF-8", "not valid JSON"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(no_markers, no_markers), min_size=0, max_size=3), no_markers, no_markers, no_markers)
def test_hh_transcripts_split_into_their_turns_and_replies(history, question, chosen, rejected):
    prefix = "".join(f"\n\nHuman: {h}\n\nAssistant: {a}" for h, a in history) + f"\n\nHuman: {question}\n\nAssistant:"
    row = {"chosen": f"{prefix} {chosen}", "rejected": f"{prefix} {rejected}"}
    turns = [m for h, a in history for m in ({"role": "user", "content": h.strip()}, {"role": "assistant", "content": a.strip()})]
    assert detect_format(row, COLUMNS) == "hh"
    assert to_pair(row, "hh", COLUMNS) == {"prompt": turns + [{"role": "user", "content": question.strip()}],
                                           "chosen": chosen.strip(), "rejected": rejected.strip()}


messages = st.lists(st.builds(lambda role, content: {"role": role, "content": content},
                              st.sampled_from(["system", "user", "assistant", "tool"]), text), max_size=4)


@settings(max_examples=200, deadline=None)
@given(messages, text, text)
def test_chat_pairs_share_their_prompt_and_differ_in_the_reply(prompt, chosen, rejected):
    row = {"chosen": prompt + [{"role": "assistant", "content": chosen}],
           "rejected": prompt + [{"role": "assistant", "content": rejected}]}
    assert detect_format(row, COLUMNS) == "chat"
    assert to_pair(row, "chat", COLUMNS) == {"prompt": prompt, "chosen": chosen, "rejected": rejected}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["role", "content", "x"]), children, max_size=3),
    max_leaves=8)
rows = st.dictionaries(st.sampled_from(["prompt", "chosen", "rejected", "margin", "other"]),
                       json_values | text | messages, max_size=5)


@settings(max_examples=500, deadline=None)
@given(rows | json_values, st.sampled_from(FORMATS))
def test_any_row_is_a_valid_pair_or_a_pair_format_error(row, fmt):
    """What the DataModule does with a row (detect, parse, check, read the margin): a clear row
    problem for anything malformed, never a TypeError or KeyError from deep inside."""
    try:
        if isinstance(row, dict):
            detect_format(row, COLUMNS)
        pair = to_pair(row, fmt, COLUMNS)
        check_pair(pair)
        margin = read_margin(row.get("margin"), "margin")
    except PairFormatError:
        return
    assert isinstance(pair["chosen"], str) and isinstance(pair["rejected"], str)
    assert pair["chosen"].strip() and pair["rejected"].strip() and pair["chosen"] != pair["rejected"]
    assert all(isinstance(m["content"], str) for m in pair["prompt"])
    assert margin >= 0
