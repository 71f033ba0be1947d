"""A data source's rows as preference pairs, and the bad-row policy (data.on_bad_row).

Each row is read in its format (rmlab.data.formats) into {prompt, chosen, rejected[, label_margin],
prompt_key, origin, metadata...}. A row that is not a usable pair stops the run naming its file,
line and problem (on_bad_row=error), or is set aside as a reject (skip), which the DataModule counts
and writes to data.rejects_file. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_only

from rmlab import strict_json
from rmlab.data.formats import PairFormatError, check_pair, detect_format, prompt_key, read_margin, stored_messages, to_pair
from rmlab.errors import DataError

BAD_ROW_POLICIES = ("error", "skip")
SKIP_HINT = "data.on_bad_row=skip skips such rows (counted, and written to data.rejects_file)"
DEFAULT_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": None}


def row_fields(row: dict[str, Any], from_file: bool) -> tuple[Any, str | None]:
    """A row's fields and the reader's problem with it (LocalFiles rows carry their JSON text)."""
    if not from_file:
        return row, None
    return json.loads(row["raw"]), row["problem"]


def bad_row(policy: str, where: str, problem: str) -> None:
    """data.on_bad_row=error: raise DataError naming the row and its problem; skip: return (the caller keeps it aside)."""
    if policy == "error":
        raise DataError(f"{where}: {problem}. {SKIP_HINT}")


def metadata_value(value: Any) -> Any:
    """A metadata value as a column can hold it whatever the other rows have: lists and objects as JSON text."""
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (list, dict)) else value


@rank_zero_only
def write_rejects(path: str, rejects: list[dict]) -> None:
    """data.rejects_file: one JSON line per skipped row ({split, origin, problem, row}), from rank 0."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("w", encoding="utf-8") as handle:
        for reject in rejects:
            handle.write(strict_json.dumps(reject, ensure_ascii=False, default=str) + "\n")


def detect_row_format(raw: Dataset, origin: str, from_file: bool, columns: dict, fmt_setting: str,
                  policy: str) -> tuple[str, list[str]]:
    """The pair format (data.format = fmt_setting, or detected from the first readable row) and, for files,
    the metadata columns kept beside the pair (the other fields of that row)."""
    skipped = []
    for index in range(len(raw)):
        row = raw[index]
        fields, problem = row_fields(row, from_file)
        where = row["origin"] if from_file else f"{origin} row {index + 1}"
        if problem is None and not isinstance(fields, Mapping):
            problem = f"expected an object with named fields, got {type(fields).__name__}"
        if problem is None:
            try:
                fmt = detect_format(fields, columns) if fmt_setting == "auto" else fmt_setting
            except PairFormatError as err:
                problem = str(err)
        if problem is not None:
            bad_row(policy, where, problem)
            skipped.append(f"{where}: {problem}")
            continue
        used = {columns[c] for c in ("prompt", "chosen", "rejected", "margin")}
        return fmt, [key for key in fields if key not in used] if from_file else []
    raise DataError(f"{origin}: no row can be read as a preference pair (first: {skipped[0]})")


def normalise_rows(raw: Dataset, origin: str, columns: dict, fmt_setting: str, policy: str) -> tuple[Dataset, list[dict]]:
    """Rows -> {prompt, chosen, rejected[, label_margin], prompt_key, origin, metadata...}. A row that
    is not a usable pair stops the run naming its file, line and problem (data.on_bad_row=error)
    or is skipped and returned as a reject {origin, problem, row} (skip). Nothing is dropped silently.
    Returns the pairs (with a `reply_fields` column: the final reply's fields a pair cannot carry)
    and the rejects."""
    if len(raw) == 0:
        raise DataError(f"{origin}: no rows")
    from_file = "raw" in raw.column_names
    fmt, metadata = detect_row_format(raw, origin, from_file, columns, fmt_setting, policy)
    margin_column = columns["margin"]
    if margin_column and not from_file and margin_column not in raw.column_names:
        raise DataError(f"{origin}: data.columns.margin={margin_column!r} is not a column; columns are {raw.column_names}")
    placeholder = {"prompt": [{"role": "user", "content": ""}], "chosen": "", "rejected": ""}
    # Plain values only in the closure: `datasets` fingerprints it to cache this step and the next.

    def normalise(row: dict[str, Any], index: int) -> dict[str, Any]:
        where = row["origin"] if from_file else f"{origin} row {index + 1}"
        fields, problem = row_fields(row, from_file)
        pair = None
        if problem is None:
            try:
                pair = to_pair(fields, fmt, columns)
                check_pair(pair)
                if margin_column:
                    pair["label_margin"] = read_margin(fields.get(margin_column), margin_column)
            except PairFormatError as err:
                problem, pair = f"{err} (format {fmt!r})", None
        if problem is not None:
            bad_row(policy, where, problem)
            pair = {**placeholder, **({"label_margin": 0.0} if margin_column else {})}
        pair.update(prompt_key=prompt_key(pair["prompt"]), origin=where, problem=problem,
                    prompt=stored_messages(pair["prompt"]), reply_fields=pair.get("reply_fields"))
        if from_file:  # the file's other fields ride along (e.g. `subset` for the bias report)
            pair.update({key: metadata_value(fields.get(key)) if isinstance(fields, Mapping) else None for key in metadata})
        return pair

    # The raw chosen/rejected columns are replaced; other columns (metadata) are kept.
    drop = ["raw", "problem", "origin"] if from_file else [
        c for c in (columns["prompt"], columns["chosen"], columns["rejected"]) if c in raw.column_names]
    pairs = raw.map(normalise, with_indices=True, remove_columns=drop, desc=f"reading {origin}")
    bad = [i for i, problem in enumerate(pairs["problem"]) if problem is not None]
    rejects = []
    if bad:
        rejected = pairs.select(bad)
        origins, problems = rejected["origin"], rejected["problem"]
        rows = [row_fields(r, from_file)[0] for r in raw.select(bad)]
        rejects = [{"origin": o, "problem": p, "row": r} for o, p, r in zip(origins, problems, rows)]
        if len(bad) == len(pairs):
            raise DataError(f"{origin}: every row was rejected (first: {origins[0]}: {problems[0]})")
        pairs = pairs.select(sorted(set(range(len(pairs))) - set(bad)))
    return pairs.remove_columns(["problem"]), rejects
