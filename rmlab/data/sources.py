"""Where preference pairs and response sets come from: local files, the Hugging Face hub, or the
built-in generators.

A source is a callable returning {"train": Dataset, "val": Dataset | None, "test": Dataset | None};
a missing split is carved out of train by prompt (`split_of`). `describe(split)` names the origin
in error messages.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from datasets import Dataset, Features, Value, load_dataset
from datasets.exceptions import DatasetGenerationError

from rmlab.data.files import file_kind, read_file_rows
from rmlab.data.formats import prompt_key
from rmlab.data.response_sets import SetFormatError, alpacaeval_groups, alpacaeval_set
from rmlab.data.synthetic import generate_pairs, generate_sets
from rmlab.errors import DataError

SPLITS = ("train", "val", "test")


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split for a prompt key: the same prompt always lands in the same split."""
    u = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


RAW_FEATURES = Features({"origin": Value("string"), "raw": Value("string"), "problem": Value("string")})
_READER_VERSION = 2  # bump when rmlab.data.files reads a file differently, so cached copies are re-read


def _raw_rows(path: str, stamp: tuple, version: int):
    """Rows of a file as {origin: "<file> line N", raw: the row as JSON text, problem}; `stamp` and
    `version` only key the `datasets` cache."""
    for row in read_file_rows(path):
        raw = json.dumps(row.data, ensure_ascii=False, default=str)
        yield {"origin": f"{path} {row.location}", "raw": raw, "problem": row.problem}


class LocalFiles:
    """Pairs from local JSONL/JSON/Parquet/CSV files (compressed too), read row by row so every row
    keeps its line (rmlab.data.files), and cached by `datasets` until the file changes.

    Each split is a Dataset of {origin, raw, problem}: the row as JSON text, parsed and checked
    by the DataModule, so one malformed row never stops the others from being read."""

    def __init__(self, path: str | None, val_path: str | None = None, test_path: str | None = None):
        self.paths = {"train": path, "val": val_path, "test": test_path}

    key_prefix = "data."  # how the config names the paths, for the missing-file error

    def _file(self, split: str, path: str) -> Path:
        """The split's file, resolved. Raises FileNotFoundError naming the config key, ValueError for an unknown type."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise FileNotFoundError(f"{self.key_prefix}{'path' if split == 'train' else split + '_path'}={path!r}: no such file ({file})")
        file_kind(file)  # an unknown type fails here, before `datasets` wraps the error
        return file

    def __call__(self) -> dict[str, Dataset | None]:
        out: dict[str, Dataset | None] = {}
        for split, path in self.paths.items():
            if path is None:
                out[split] = None
                continue
            file = self._file(split, path)
            stat = file.stat()
            try:
                out[split] = Dataset.from_generator(
                    _raw_rows, features=RAW_FEATURES,
                    gen_kwargs={"path": str(path), "stamp": (str(file), stat.st_size, stat.st_mtime_ns), "version": _READER_VERSION})
            except DatasetGenerationError as err:  # re-raise the reader's own error, not datasets' wrapper
                raise (err.__cause__ or err) from None
            except ValueError:
                if next(read_file_rows(file), None) is None:  # `datasets` refuses a generator without rows
                    raise DataError(f"{path}: no rows") from None
                raise
        return out

    def describe(self, split: str) -> str:
        return str(self.paths[split])


class HubDataset:
    """Pairs from a Hugging Face hub dataset (needs the hub, or its local cache)."""

    def __init__(self, name: str, config: str | None = None, split: str = "train",
                 val_split: str | None = None, test_split: str | None = None, data_dir: str | None = None):
        self.name, self.config, self.data_dir = name, config, data_dir
        self.splits = {"train": split, "val": val_split, "test": test_split}

    def __call__(self) -> dict[str, Dataset | None]:
        def load(split: str | None) -> Dataset | None:
            if split is None:
                return None
            try:
                return load_dataset(self.name, self.config, split=split, data_dir=self.data_dir)
            except ConnectionError as err:
                raise ConnectionError(f"{err}. Offline, train on a local file instead: "
                                      "data=local data.path=<pairs.jsonl[.gz]|.parquet>") from err
        return {name: load(split) for name, split in self.splits.items()}

    def describe(self, split: str) -> str:
        return f"{self.name}[{self.splits[split]}]"


class Synthetic:
    """The built-in generator (`rmlab.data.synthetic`): offline, with planted, known artifacts.

    Train pairs carry `length_bias` (P(chosen is longer)); val/test use `eval_length_bias`, so a
    model that learned length instead of correctness is exposed on held-out data. Prompts are
    assigned to splits by hash, so no prompt appears in two splits.
    """

    def __init__(self, n_train: int = 2000, n_val: int = 300, n_test: int = 300, seed: int = 0,
                 length_bias: float = 0.8, eval_length_bias: float = 0.5,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, **style: float):
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.seed, self.style = seed, style
        self.length_bias = {"train": length_bias, "val": eval_length_bias, "test": eval_length_bias}
        self.fractions = (val_fraction, test_fraction)

    def __call__(self) -> dict[str, Dataset | None]:
        def in_split(split: str):
            return lambda prompt: split_of(prompt_key([{"role": "user", "content": prompt}]), *self.fractions) == split

        out = {}
        for offset, split in enumerate(SPLITS):
            rows = generate_pairs(self.sizes[split], seed=self.seed * 1000 + offset, length_bias=self.length_bias[split],
                                  prompt_filter=in_split(split), **self.style)
            out[split] = Dataset.from_list(rows)
        return out

    def describe(self, split: str) -> str:
        return f"synthetic[{split}]"


class SyntheticSets(Synthetic):
    """The built-in generator's response sets (rmlab.data.synthetic.generate_sets): per prompt one
    correct answer and k - 1 flawed ones, gold scores 1 / 0. `length_bias` is P(the correct response
    is longer than a given flawed one) in train, `eval_length_bias` in val/test; below 0.5 longer
    responses are more often wrong."""

    def __init__(self, k: int = 4, n_train: int = 1000, n_val: int = 200, n_test: int = 200, seed: int = 0,
                 length_bias: float = 0.5, eval_length_bias: float = 0.5,
                 val_fraction: float = 0.1, test_fraction: float = 0.1, **style: float):
        super().__init__(n_train, n_val, n_test, seed, length_bias, eval_length_bias, val_fraction, test_fraction, **style)
        self.k = k

    def __call__(self) -> dict[str, Dataset | None]:
        out = {}
        for offset, split in enumerate(SPLITS):
            def in_split(prompt: str, split: str = split) -> bool:
                return split_of(prompt_key([{"role": "user", "content": prompt}]), *self.fractions) == split
            rows = generate_sets(self.sizes[split], k=self.k, seed=self.seed * 1000 + offset,
                                 length_bias=self.length_bias[split], prompt_filter=in_split, **self.style)
            out[split] = Dataset.from_list(rows)
        return out

    def describe(self, split: str) -> str:
        return f"synthetic_sets[{split}]"


SET_FEATURES = Features({**RAW_FEATURES, "reason": Value("string")})


def _alpacaeval_rows(path: str, judge: str | None):
    """Response sets of an AlpacaEval pairs file as LocalFiles rows: origin "<file> lines 3, 9, ...",
    the set as JSON text, or the problem of a line or of a group, and its reason (REASONS)."""
    pairs = []
    for row in read_file_rows(path):
        if row.problem is not None or not isinstance(row.data, dict):
            problem = row.problem or f"expected an object with named fields, got {type(row.data).__name__}"
            yield {"origin": f"{path} {row.location}", "raw": json.dumps(row.data, ensure_ascii=False, default=str),
                   "problem": problem, "reason": "unreadable"}
            continue
        missing = [key for key in ("prompt", "judge", "chosen", "rejected", "chosen_model", "rejected_model",
                                   "judge_confidence") if row.data.get(key) is None]
        if missing:
            yield {"origin": f"{path} {row.location}", "raw": json.dumps(row.data, ensure_ascii=False),
                   "problem": f"not an AlpacaEval pair: missing {missing}", "reason": "missing_column"}
        elif judge is None or row.data["judge"] == judge:
            pairs.append({**row.data, "_line": row.location.removeprefix("line ").removeprefix("row ")})
    for members in alpacaeval_groups(pairs).values():
        origin = f"{path} lines {', '.join(p['_line'] for p in members)}"
        try:
            yield {"origin": origin, "raw": json.dumps(alpacaeval_set(members), ensure_ascii=False), "problem": None, "reason": None}
        except SetFormatError as err:
            yield {"origin": origin, "raw": json.dumps(members, ensure_ascii=False), "problem": str(err), "reason": err.reason}


class AlpacaEvalSets(LocalFiles):
    """Response sets grouped on the fly from AlpacaEval pairs files (rmlab.data.response_sets.alpacaeval_set):
    one set per (prompt, judge), gold score = judged win probability against the reference output.
    `judge` keeps one judge's sets (the files hold two judges' verdicts on the same outputs); None keeps both.
    Rows are LocalFiles rows, so a problem names the file and the lines of the set, plus the problem's `reason`."""

    def __init__(self, path: str | None, val_path: str | None = None, test_path: str | None = None, judge: str | None = None):
        super().__init__(path, val_path, test_path)
        self.judge = judge

    key_prefix = "data.source."

    def __call__(self) -> dict[str, Dataset | None]:
        out: dict[str, Dataset | None] = {}
        for split, path in self.paths.items():
            if path is None:
                out[split] = None
                continue
            self._file(split, path)
            rows = list(_alpacaeval_rows(str(path), self.judge))
            if not rows:
                raise DataError(f"{path}: no AlpacaEval pairs" + (f" of judge {self.judge!r}" if self.judge else ""))
            out[split] = Dataset.from_list(rows, features=SET_FEATURES)
        return out
