"""Where preference pairs come from: local files, the Hugging Face hub, or the built-in generator.

A source is a callable returning {"train": Dataset, "val": Dataset | None, "test": Dataset | None};
a missing split is carved out of train by prompt (`split_of`). `describe(split)` names the origin
in error messages.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from datasets import Dataset, load_dataset

from rmlab.data.formats import prompt_key
from rmlab.data.synthetic import generate_pairs

SPLITS = ("train", "val", "test")
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def split_of(key: str, val_fraction: float, test_fraction: float) -> str:
    """Deterministic split for a prompt key: the same prompt always lands in the same split."""
    u = int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:12], 16) / 16**12
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _builder(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zst")]
    builder = _BUILDERS.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise ValueError(f"{path}: unknown file type; use one of {sorted(_BUILDERS)} (optionally .gz)")
    return builder


class LocalFiles:
    """Pairs from local JSONL/JSON/Parquet/CSV files (gzipped too), loaded and cached by `datasets`."""

    def __init__(self, path: str | None, val_path: str | None = None, test_path: str | None = None):
        self.paths = {"train": path, "val": val_path, "test": test_path}

    def __call__(self) -> dict[str, Dataset | None]:
        out: dict[str, Dataset | None] = {}
        for split, path in self.paths.items():
            if path is None:
                out[split] = None
                continue
            file = Path(path).expanduser().resolve()
            if not file.is_file():
                raise FileNotFoundError(f"data.{'path' if split == 'train' else split + '_path'}={path!r}: no such file ({file})")
            out[split] = load_dataset(_builder(file), data_files=str(file), split="train")
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
