"""Read response sets from a source's split: every row checked, bad rows stopped or counted per reason.

The DataModule calls `read_sets` once per split, on the same Datasets that pairs come from
(rmlab.data.sources): LocalFiles rows carry their location ({origin, raw, problem}), hub rows are
plain columns. A bad row (rmlab.data.response_sets.REASONS) stops the run naming its file, line and
problem (data.on_bad_row=error), or is skipped, counted under its reason, logged once per reason and
kept in `SetsRead.rejects` for the rejects file (skip). Nothing is dropped silently.

    read = read_sets(raw, "sets.jsonl", "train", on_bad_row="skip")
    read.sets        # Dataset: prompt, responses, scores, prompt_key, origin, metadata columns
    read.stats       # {sets, responses, k_min, k_max, rejected, rejected_<reason>: n}

With data.format=sets_from_rows (one response per row, HelpSteer 2) the rows of one prompt are
grouped into a set, in order of first appearance; a bad row is set aside on its own and the set is
built from the prompt's other rows.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset

from rmlab.data.formats import prompt_key, stored_messages
from rmlab.data.response_sets import SET_FORMATS, SetFormatError, check_set, detect_set_format, set_columns, to_response_set
from rmlab.errors import DataError

log = logging.getLogger(__name__)
BAD_ROW_POLICIES = ("error", "skip")
SKIP_HINT = "data.on_bad_row=skip skips such rows (counted, and written to data.rejects_file)"
SET_FIELDS = ("prompt", "responses", "scores", "prompt_key", "origin")


@dataclass
class SetsRead:
    """What `read_sets` gives back for one split."""

    sets: Dataset                                    # one row per set: SET_FIELDS + the data's other fields
    format: str                                      # the layout read (data.format, or detected)
    rejects: list[dict] = field(default_factory=list)  # {split, origin, reason, problem, row}
    stats: dict[str, int] = field(default_factory=dict)


def _rows(raw: Dataset, origin: str) -> Iterator[tuple[str, Any, str | None, str]]:
    """(where, fields, the reader's problem, its reason) of every row: file rows keep their line; a
    source that groups rows itself (AlpacaEvalSets) gives its problems' reasons in a `reason` column."""
    from_file = "raw" in raw.column_names and "origin" in raw.column_names
    for index, row in enumerate(raw):
        if from_file:
            yield row["origin"], json.loads(row["raw"]), row["problem"], row.get("reason") or "unreadable"
        else:
            yield f"{origin} row {index + 1}", row, None, "unreadable"


def _scalar(value: Any) -> Any:
    """A metadata value as one Arrow column holds it whatever other rows have: lists and objects as JSON text."""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (list, dict)) else value


def _used_columns(columns: dict[str, str | None]) -> set[str]:
    return {name for name in columns.values() if name}


def read_sets(raw: Dataset, origin: str, split: str, format: str = "auto", columns: Mapping[str, str | None] | None = None,
              score_key: str | None = None, score_weights: Mapping[str, float] | None = None,
              on_bad_row: str = "error", turn_markers: Mapping[str, str] | None = None) -> SetsRead:
    """The response sets of one split (`origin` names it in messages: a file, or hub id[split]).

    Args:
        raw: a source's Dataset for the split (LocalFiles rows or hub columns).
        format: "auto" (detected from the first readable row) or one of SET_FORMATS.
        columns: data.columns (rmlab.data.response_sets.SET_COLUMNS; unnamed ones keep their default).
        score_key / score_weights: data.score_key (a dotted path) / data.score_weights: the training
            target from attribute scores.
        on_bad_row: "error" raises DataError at the first bad row; "skip" counts it.
        turn_markers: data.turn_markers, {role: marker}: prompt strings holding earlier turns behind
            such markers become chat messages (rmlab.data.response_sets.split_turns; HelpSteer 2).
    Returns SetsRead; its `stats` count sets, responses, the smallest and largest K, and the rejected
    rows per reason (`rejected_<reason>`).
    Raises DataError: a bad row under on_bad_row=error, no rows, or every row rejected.
    """
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"data.on_bad_row={on_bad_row!r}; choose one of {BAD_ROW_POLICIES}")
    if format != "auto" and format not in SET_FORMATS:
        raise ValueError(f"data.format={format!r}; choose 'auto' or one of {SET_FORMATS}")
    if len(raw) == 0:
        raise DataError(f"{origin}: no rows")
    columns = set_columns(columns)
    rejects: list[dict] = []

    def reject(where: str, reason: str, problem: str, row: Any) -> None:
        if on_bad_row == "error":
            raise DataError(f"{where}: {problem}. {SKIP_HINT}")
        rejects.append({"split": split, "origin": where, "reason": reason, "problem": problem, "row": row})

    read: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (where, set, the row's fields)
    for where, fields, problem, reason in _rows(raw, origin):
        if problem is None and not isinstance(fields, Mapping):
            problem = f"expected an object with named fields, got {type(fields).__name__}"
        if problem is not None:
            reject(where, reason, problem, fields)
            continue
        try:
            if format == "auto":
                format = detect_set_format(fields, columns)
            response_set = to_response_set(fields, columns, score_key, score_weights, format, turn_markers)
        except SetFormatError as err:
            reject(where, err.reason, f"{err} (format {format!r})", fields)
            continue
        read.append((where, response_set, fields))
    if format == "sets_from_rows":
        read = _group(read, reject)
    if not read:
        first = rejects[0]
        raise DataError(f"{origin}: every row was rejected (first: {first['origin']}: {first['problem']})")
    sets = Dataset.from_list(_one_type_per_column([_stored(where, response_set, fields, columns)
                                                   for where, response_set, fields in read]))
    reasons = Counter(r["reason"] for r in rejects)
    for reason, count in sorted(reasons.items()):
        first = next(r for r in rejects if r["reason"] == reason)
        log.warning("%s: skipped %d rows (%s; data.on_bad_row=skip), first: %s: %s", split, count, reason,
                    first["origin"], first["problem"])
    sizes = [len(s["responses"]) for _, s, _ in read]
    # A set whose scores are all equal has no preference, only ties: kept (a ties loss learns from it), counted.
    all_tied = sum(len(set(s["scores"])) == 1 for _, s, _ in read)
    stats = {"sets": len(read), "responses": sum(sizes), "k_min": min(sizes), "k_max": max(sizes), "all_tied": all_tied,
             "rejected": len(rejects), **{f"rejected_{reason}": count for reason, count in sorted(reasons.items())}}
    log.info("%s: %s (format %s)", split, stats, format)
    return SetsRead(sets, format, rejects, stats)


def _stored(where: str, response_set: dict[str, Any], fields: Mapping[str, Any], columns: dict[str, str | None]) -> dict[str, Any]:
    """One set as a Dataset row: prompt as stored messages, its key, its origin, and the row's other fields."""
    metadata = {key: _scalar(value) for key, value in fields.items() if key not in _used_columns(columns)
                and key not in SET_FIELDS}
    return {"prompt": stored_messages(response_set["prompt"]), "responses": response_set["responses"],
            "scores": response_set["scores"], "prompt_key": prompt_key(response_set["prompt"]), "origin": where, **metadata}


def _one_type_per_column(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with every row's fields (None where a row has none), a metadata field whose values differ in
    type between rows (e.g. a number here, a string there) held as text, so that one Arrow column holds it."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    mixed = [key for key in keys if key not in SET_FIELDS and len(
        {bool if isinstance(v, bool) else float if isinstance(v, int) else type(v) for v in (row.get(key) for row in rows)
         if v is not None}) > 1]
    for key in mixed:
        log.info("metadata field %r has values of several types: kept as text", key)
    return [{key: (str(row.get(key)) if key in mixed and row.get(key) is not None else row.get(key)) for key in keys}
            for row in rows]


def _group(read: list[tuple[str, dict[str, Any], dict[str, Any]]], reject) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """One set per prompt from one-response rows (sets_from_rows), in order of first appearance. The
    set's origin lists its rows; each other field becomes a list with one entry per response."""
    groups: dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]] = {}
    for item in read:
        groups.setdefault(prompt_key(item[1]["prompt"]), []).append(item)
    out = []
    for members in groups.values():
        where = _joined([m[0] for m in members])
        responses = [m[1]["responses"][0] for m in members]
        scores = [m[1]["scores"][0] for m in members]
        keys = list(dict.fromkeys(k for m in members for k in m[2]))
        fields = {key: [m[2].get(key) for m in members] for key in keys}
        try:
            check_set(responses, scores)
        except SetFormatError as err:
            reject(where, err.reason, f"{err} (format 'sets_from_rows')", fields)
            continue
        out.append((where, {"prompt": members[0][1]["prompt"], "responses": responses, "scores": scores}, fields))
    return out


def _joined(origins: list[str]) -> str:
    """Where a grouped set's rows are: "hs.jsonl line 3 + line 9" when they share a file."""
    head, _, _ = origins[0].rpartition(" ")
    prefix = head.rpartition(" ")[0] if head.endswith(("line", "row")) else ""
    if prefix and all(o.startswith(prefix + " ") for o in origins):
        return prefix + " " + " + ".join(o[len(prefix) + 1:] for o in origins)
    return " + ".join(origins)
