"""LightningDataModule: preference pairs from any source -> tokenized, counted, padded batches."""

from __future__ import annotations

import logging
from typing import Any, Callable

import lightning as L
from datasets import Dataset
from torch.utils.data import DataLoader

from rmlab.data.collate import PairCollator
from rmlab.data.formats import FORMATS, PairFormatError, detect_format, prompt_key, to_pair
from rmlab.data.sources import SPLITS, LocalFiles, split_of
from rmlab.data.tokenize import special_token_frame, tokenize_pair, use_chat_template
from rmlab.model.backbone import load_tokenizer

log = logging.getLogger(__name__)
DEFAULT_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": None}


class PreferenceDataModule(L.LightningDataModule):
    """Loads pairs from `source` (or the local files `path`, `val_path`, `test_path`), normalises their format, splits by prompt, tokenizes (cached by
    `datasets`), applies the over-long policy and counts what it truncated or dropped.

    After `setup()`, `self.stats[split]` holds {pairs, truncated_prompt, truncated_response, dropped}.
    """

    def __init__(
        self,
        tokenizer: dict,
        source: Callable[[], dict[str, Dataset | None]] | None = None,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        max_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        overlong: str = "truncate",
        format: str = "auto",
        columns: dict | None = None,
        chat_template: str | bool = "auto",
        padding_side: str | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_workers: int = 0,
    ):
        super().__init__()
        if (source is None) == (path is None):
            raise ValueError("give either data.source or data.path (a local file; data=local), not both or neither")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"data.format={format!r}; choose 'auto' or one of {FORMATS}")
        self.source = source or LocalFiles(path, val_path, test_path)
        self.tokenizer = load_tokenizer(**tokenizer)
        if padding_side:
            self.tokenizer.padding_side = padding_side
        self.columns = {**DEFAULT_COLUMNS, **(columns or {})}
        self.max_length, self.overlong, self.format = max_length, overlong, format
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.chat_template = use_chat_template(self.tokenizer, chat_template)
        # Chat templates carry their own special tokens; plain text gets the tokenizer's frame.
        self.frame = ([], [], []) if self.chat_template else special_token_frame(self.tokenizer)
        self.fractions = (val_fraction, test_fraction)
        self.num_workers = num_workers
        self.splits: dict[str, Dataset] | None = None
        self.stats: dict[str, dict[str, int]] = {}

    # -- loading ---------------------------------------------------------------------------
    def _normalise(self, raw: Dataset, origin: str) -> Dataset:
        if len(raw) == 0:
            raise ValueError(f"{origin}: no rows")
        fmt = detect_format(raw[0], self.columns) if self.format == "auto" else self.format
        margin_column = self.columns["margin"]
        if margin_column and margin_column not in raw.column_names:
            raise ValueError(f"{origin}: data.columns.margin={margin_column!r} is not a column; columns are {raw.column_names}")

        def normalise(row: dict[str, Any], index: int) -> dict[str, Any]:
            try:
                pair = to_pair(row, fmt, self.columns)
                if margin_column:
                    pair["margin"] = float(row[margin_column])
            except (PairFormatError, TypeError, ValueError) as err:
                raise ValueError(f"{origin} row {index}: {err} (format {fmt!r})") from None
            pair["prompt_key"] = prompt_key(pair["prompt"])
            return pair

        # The raw chosen/rejected columns are replaced; other columns (metadata) are kept.
        drop = [c for c in (self.columns["prompt"], self.columns["chosen"], self.columns["rejected"]) if c in raw.column_names]
        return raw.map(normalise, with_indices=True, remove_columns=drop, desc=f"reading {origin}")

    def _tokenize(self, pairs: Dataset, split: str) -> Dataset:
        tokenized = pairs.map(
            tokenize_pair,
            fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length, "overlong": self.overlong,
                       "chat_template": self.chat_template, "frame": self.frame},
            desc=f"tokenizing {split}",
        )
        kept = tokenized.filter(lambda keep: keep, input_columns="keep")
        self.stats[split] = {
            "pairs": len(kept),
            "truncated_prompt": sum(tokenized["prompt_truncated"]),
            "truncated_response": sum(tokenized["response_truncated"]),
            "dropped": len(tokenized) - len(kept),
        }
        log.info("%s: %s (max_length=%d, overlong=%s)", split, self.stats[split], self.max_length, self.overlong)
        if len(kept) == 0:
            raise ValueError(f"{split}: every pair was dropped as longer than data.max_length={self.max_length}; "
                             "raise max_length or use data.overlong=truncate")
        return kept

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        raw = self.source()
        describe = getattr(self.source, "describe", lambda split: split)
        normalised = {split: self._normalise(ds, describe(split)) for split, ds in raw.items() if ds is not None}
        missing = [split for split in SPLITS if split not in normalised]
        if missing:
            # Carve missing splits out of train by prompt, so no prompt is in two splits.
            train = normalised.pop("train")
            assignment = [split_of(key, *self.fractions) for key in train["prompt_key"]]
            assignment = [s if s in missing else "train" for s in assignment]
            for split in ["train", *missing]:
                normalised[split] = train.select([i for i, s in enumerate(assignment) if s == split])
                if len(normalised[split]) == 0:
                    raise ValueError(f"{describe('train')}: too few distinct prompts to carve a {split} split "
                                     f"(val_fraction={self.fractions[0]}, test_fraction={self.fractions[1]}); "
                                     f"give data.{split}_path or more data")
        self.splits = {split: self._tokenize(normalised[split], split) for split in SPLITS}

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        columns = ["chosen_input_ids", "rejected_input_ids"] + (["margin"] if self.columns["margin"] else [])
        return DataLoader(
            self.splits[split].select_columns(columns),
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            collate_fn=PairCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
