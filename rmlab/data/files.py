"""Read a local pairs file row by row, each row with where it came from (`line N` / `row N`).

A leading UTF-8 byte-order mark is ignored, as `datasets` does. JSON Lines and CSV are read by
line so that a problem names the line: bytes that are not UTF-8,
a line that is not JSON, a CSV record with more fields than the header. Such a row is yielded
with its `problem` instead of failing the whole file, so the caller decides: stop with the
location (data.on_bad_row=error) or skip it and keep a record (data.on_bad_row=skip).
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rmlab.errors import DataError

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
KINDS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class RawRow:
    """One row of a file: its location, its fields and what is wrong with it (then `data` is the
    row's text as far as it could be read, for the rejects file)."""

    location: str
    data: Any = None
    problem: str | None = None


def file_kind(path: Path) -> tuple[str, str]:
    """(kind, compression) of a file name, e.g. ('.jsonl', '.gz') for pairs.jsonl.gz."""
    compression = path.suffix if path.suffix in OPENERS else ""
    kind = Path(path.name.removesuffix(compression)).suffix
    if kind not in KINDS:
        raise DataError(f"{path}: unknown file type; use one of {list(KINDS)} (optionally {'/'.join(OPENERS)})")
    return kind, compression


def read_file_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of a JSONL / JSON / Parquet / CSV file (compressed too), in file order."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no such file ({file.resolve()})")
    kind, compression = file_kind(file)
    if kind == ".parquet":
        yield from _parquet_rows(file)
        return
    try:
        with OPENERS.get(compression, open)(file, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"{file}: cannot be read as {compression or kind} ({err})") from None
    # "UTF-8 with BOM" (Excel, Notepad): the mark is not data; left in, it would glue onto the
    # first CSV column's name or make line 1 invalid JSON.
    content = content.removeprefix(codecs.BOM_UTF8)
    if kind == ".csv":
        yield from _csv_rows(file, content)
        return
    if kind == ".json" and content.lstrip().startswith(b"["):
        yield from _json_array_rows(file, content)
        return
    yield from _jsonl_rows(content)  # .jsonl, and a .json that is not an array (as `datasets` reads it)


def _decode(line: bytes) -> tuple[str | None, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 (byte 0x{line[err.start]:02x} at byte {err.start + 1} of the line)"


def _jsonl_rows(content: bytes) -> Iterator[RawRow]:
    for number, line in enumerate(content.split(b"\n"), start=1):
        if not line.strip():
            continue  # blank lines are not rows (as for `datasets`)
        location = f"line {number}"
        text, problem = _decode(line)
        if problem:
            yield RawRow(location, line.decode("utf-8", errors="replace"), problem)
            continue
        try:
            yield RawRow(location, json.loads(text))
        except json.JSONDecodeError as err:
            yield RawRow(location, text, f"not valid JSON ({err.msg} at column {err.colno})")


def _json_array_rows(file: Path, content: bytes) -> Iterator[RawRow]:
    text, problem = _decode(content)
    if problem:
        raise DataError(f"{file}: {problem.replace('of the line', 'of the file')}")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        # One array: no row boundary to skip to, so even data.on_bad_row=skip cannot go on.
        raise DataError(f"{file} line {err.lineno}: not valid JSON ({err.msg} at column {err.colno}); "
                        "the file is one JSON array, so no row can be skipped: fix it, or write one object per line (.jsonl)") from None
    if not isinstance(rows, list):
        raise DataError(f"{file}: expected a JSON array of objects or one JSON object per line")
    for number, row in enumerate(rows, start=1):
        yield RawRow(f"row {number}", row)


def _csv_rows(file: Path, content: bytes) -> Iterator[RawRow]:
    csv.field_size_limit(2**31 - 1)  # the default (128 KiB) is shorter than some real responses
    # surrogateescape keeps undecodable bytes visible per record instead of failing the file.
    reader = csv.DictReader(io.StringIO(content.decode("utf-8", errors="surrogateescape"), newline=""))
    end = None  # the last line read so far; a record starts on the line after it
    while True:
        try:
            if end is None:
                reader.fieldnames  # reads the header  # noqa: B018
                end = reader.line_num
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:  # e.g. a NUL byte: csv cannot resynchronise after it
            raise DataError(f"{file} line {reader.line_num}: not valid CSV ({err})") from None
        location, end = f"line {end + 1}", reader.line_num
        values = [v for v in record.values() if isinstance(v, str)]
        if None in record:
            yield RawRow(location, _readable(record), f"{len(record[None])} more field(s) than the header's {len(reader.fieldnames)}")
        elif any(_has_bad_bytes(v) for v in values):
            yield RawRow(location, _readable(record), "not valid UTF-8")
        else:
            yield RawRow(location, dict(record))


def _readable(record: dict) -> dict:
    """A CSV record with undecodable bytes shown as U+FFFD and extra fields under "extra"."""
    fix = lambda v: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v  # noqa: E731
    return {("extra" if k is None else k): [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in record.items()}


def _has_bad_bytes(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _parquet_rows(file: Path) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{file}: not a readable Parquet file ({err})") from None
    number = 0
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            number += 1
            yield RawRow(f"row {number}", row)
