"""LightningDataModule: preference pairs from any source -> tokenized, counted, padded batches."""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

import lightning as L
from datasets import Dataset
from torch.utils.data import DataLoader, DistributedSampler

from rmlab.data.collate import PairCollator
from rmlab.data.formats import FORMATS, PairFormatError, detect_format, prompt_key, to_pair
from rmlab.data.sources import SPLITS, LocalFiles, split_of
from rmlab.data.tokenize import special_token_frame, tokenize_pair, use_chat_template
from rmlab.model.backbone import load_tokenizer

log = logging.getLogger(__name__)
DEFAULT_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": None}


class ResumableSampler(DistributedSampler):
    """A DistributedSampler that starts each pass `skip()` samples in: 0 at an epoch's start, the
    samples already trained on when a run resumes mid-epoch (so it trains on the rest of that
    epoch's order, not on its start again). Asked when the pass starts, after Lightning restored the step."""

    def __init__(self, *args, skip: Callable[[], int] = lambda: 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip():])


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
        max_train_pairs: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        has_files = any(p is not None for p in (path, val_path, test_path))
        if (source is None) == (not has_files):
            raise ValueError("give either data.source or data.path (a local file; data=local), not both or neither")
        if format != "auto" and format not in FORMATS:
            raise ValueError(f"data.format={format!r}; choose 'auto' or one of {FORMATS}")
        self.source = source or LocalFiles(path, val_path, test_path)
        self.max_train_pairs, self.seed = max_train_pairs, seed
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
        self.splits: dict[str, Dataset] = {}
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
        kept = kept.add_column("index", list(range(len(kept))))  # row id, so eval rewards map back to texts
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
        """`fit` (and None) prepares every split; `validate` / `test` only the one they need, so a
        file of test pairs alone (data.test_path) can be evaluated."""
        needed = {"validate": ("val",), "test": ("test",)}.get(stage or "fit", SPLITS)
        if all(split in self.splits for split in needed):
            return
        raw = self.source()
        describe = getattr(self.source, "describe", lambda split: split)
        normalised = {split: self._normalise(ds, describe(split)) for split, ds in raw.items() if ds is not None}
        missing = [split for split in SPLITS if split not in normalised]
        if any(split in missing for split in needed):
            if "train" not in normalised:
                raise ValueError(f"no data for the {'/'.join(needed)} split: give data.path or data.{needed[0]}_path")
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
        if "train" in needed and self.max_train_pairs is not None and self.max_train_pairs < len(normalised["train"]):
            # A seeded random subset (e.g. the seed exercise's "train on a subset"); counted in the stats.
            available = len(normalised["train"])
            normalised["train"] = normalised["train"].shuffle(seed=self.seed).select(range(self.max_train_pairs))
            log.info("train: %d of %d pairs (data.max_train_pairs)", self.max_train_pairs, available)
        self.splits.update({split: self._tokenize(normalised[split], split) for split in needed})

    def encode_response(self, prompt: list[dict], response: str) -> list[int]:
        """Token ids the model reads for one (prompt, response), as in training; over-long ones are
        truncated (never dropped), so every response of a probe set gets a reward."""
        pair = {"prompt": prompt, "chosen": response, "rejected": response}
        return tokenize_pair(pair, self.tokenizer, self.max_length, "truncate", self.chat_template, self.frame)["chosen_input_ids"]

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        columns = ["index", "chosen_input_ids", "rejected_input_ids"] + (["margin"] if self.columns["margin"] else [])
        dataset = self.splits[split].select_columns(columns)
        sampler = None
        if shuffle:
            # The same seeded permutation for any number of processes, dealt out rank by rank: N
            # processes with batch_size b see, step by step, the pairs that 1 process with batch
            # N*b sees (Lightning keeps a DistributedSampler it is given, and sets its epoch).
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                       skip=lambda: self._batches_done_in_epoch(len(sampler)) * self.batch_size)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            collate_fn=PairCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side),
            num_workers=self.num_workers,
        )

    def _batches_done_in_epoch(self, samples_per_rank: int) -> int:
        """The batches of the current epoch that training already stepped through: 0 at an epoch's
        start; on a mid-epoch resume, those before the restored step."""
        if self.trainer is None or self.trainer.global_step == 0:
            return 0
        batches = self.trainer.num_training_batches  # honours trainer.limit_train_batches
        if not math.isfinite(batches):
            batches = math.ceil(samples_per_rank / self.batch_size)
        accumulate = self.trainer.accumulate_grad_batches
        return (self.trainer.global_step % math.ceil(batches / accumulate)) * accumulate

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
