"""LightningDataModule: preference pairs from any source -> tokenized, counted, padded batches."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import lightning as L
import pyarrow.compute as pc
import torch
from datasets import Dataset, concatenate_datasets
from jinja2 import TemplateError
from torch.utils.data import DataLoader

from rmlab.data.augment import augment_pairs
from rmlab.data.balance import BALANCE_METHODS, balance_weights, check_cues, cue_signs, effective_pairs, length_gaps
from rmlab.data.collate import PACKING, make_collator
from rmlab.data.formats import FORMATS
from rmlab.data.response_sets import SET_FORMATS, is_set_row
from rmlab.data.rows import BAD_ROW_POLICIES, DEFAULT_COLUMNS, bad_row, normalise_rows, write_rejects
from rmlab.data.samplers import LengthSortedSampler, ResumableSampler
from rmlab.data.set_collate import PackedSetCollator, SetCollator
from rmlab.data.set_reader import read_sets
from rmlab.data.set_tokens import tokenize_sets
from rmlab.data.sources import SPLITS, LocalFiles, split_of
from rmlab.data.tokenize import check_chat_template, special_token_frame, tokenize_pair, use_chat_template
from rmlab.errors import ConfigError, DataError
from rmlab.hub import is_causal_decoder, load_config, load_tokenizer

log = logging.getLogger(__name__)
def _tokenize_row(pair: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """tokenize_pair, with a row the chat template cannot render named by its file and line."""
    try:
        return tokenize_pair(pair, **settings)
    except (ValueError, TypeError, TemplateError) as error:  # what a chat template (jinja) raises on a row it cannot render
        raise DataError(f"{pair.get('origin', 'a row')}: cannot be tokenized ({type(error).__name__}: {error}). "
                        "If the chat template is at fault, data.chat_template=false renders chats as plain text") from None


def resolve_packing(packing: str, backbone: dict) -> str:
    """data.packing=auto: shared_prompt on causal decoders (whose attention can take its mask),
    none on encoders, where a prompt token would see both replies. An explicit shared_prompt that
    cannot work stops here, before any data is read."""
    if packing != "auto" and packing not in PACKING:
        raise ConfigError(f"data.packing={packing!r}; choose auto or one of {PACKING}")
    if packing == "none":
        return packing
    attention = backbone.get("attn_implementation")
    config = load_config(backbone)
    causal = config is not None and is_causal_decoder(config)
    if packing == "auto":
        return "shared_prompt" if causal and attention in (None, "sdpa", "eager") else "none"
    if config is not None and not causal:
        raise ConfigError(f"data.packing=shared_prompt needs a causal decoder; {backbone['name_or_path']} is a "
                          f"{config.model_type} encoder, whose prompt tokens would see both replies. "
                          "Use data.packing=auto or none")
    if attention not in (None, "sdpa", "eager"):
        raise ConfigError(f"data.packing=shared_prompt builds its own attention mask, which attn_implementation="
                          f"{attention!r} cannot take; use sdpa or eager, or data.packing=none")
    return packing


class PreferenceDataModule(L.LightningDataModule):
    """Loads pairs from `source` (or the local files `path`, `val_path`, `test_path`), normalises their format, splits by prompt, tokenizes (cached by
    `datasets`), applies the over-long policy and counts what it truncated or dropped.

    After `setup()`, `self.stats[split]` holds {pairs, truncated_prompt, truncated_response, dropped,
    rejected, same_ids, unknown_responses, unrendered_tool_calls, reply_fields_dropped}: `rejected`
    counts the rows skipped as bad (data.on_bad_row=skip; rows unreadable in a file count under the
    split of that file, a split carved out of train counting them under train), `same_ids` those of
    them whose two responses tokenize to the same ids; each is also in `self.rejects`.
    `unknown_responses` counts responses holding the tokenizer's unknown token.

    Response sets (a prompt and K >= 2 scored responses; data.format sets_* or detected) are read by
    rmlab.data.set_reader.read_sets and tokenized by rmlab.data.set_tokens.tokenize_sets: `self.sets`
    is then True and the stats count {sets, responses, k_min, k_max, all_tied, ...} instead of pairs.
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
        eval_batch_size: int | None = 32,
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
        on_bad_row: str = "error",
        rejects_file: str | None = None,
        packing: str = "auto",
        group_by_length: bool = True,
        balance: dict | None = None,
        length_matched: bool = False,
        augment: dict | None = None,
        score_key: str | None = None,
        score_weights: dict | None = None,
        turn_markers: dict | None = None,
    ):
        super().__init__()
        has_files = any(p is not None for p in (path, val_path, test_path))
        if (source is None) == (not has_files):
            raise ValueError("give either data.source or data.path (a local file; data=local), not both or neither")
        if format != "auto" and format not in FORMATS + SET_FORMATS:
            raise ValueError(f"data.format={format!r}; choose 'auto', a pair format {FORMATS} or a response-set "
                             f"format {SET_FORMATS}")
        if on_bad_row not in BAD_ROW_POLICIES:
            raise ValueError(f"data.on_bad_row={on_bad_row!r}; choose one of {BAD_ROW_POLICIES}")
        self.on_bad_row, self.rejects_file = on_bad_row, rejects_file
        self.rejects: list[dict] = []  # skipped rows: {split, origin, problem, row}
        self.rejected: dict[str, int] = {}
        self.reply_fields_dropped: dict[str, int] = {}
        self.source = source or LocalFiles(path, val_path, test_path)
        self.max_train_pairs, self.seed = max_train_pairs, seed
        self.tokenizer = load_tokenizer(**tokenizer)
        if padding_side:
            self.tokenizer.padding_side = padding_side
        self.columns = {**DEFAULT_COLUMNS, **(columns or {})}
        self.max_length, self.overlong, self.format = max_length, overlong, format
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.chat_template = use_chat_template(self.tokenizer, chat_template)
        if self.chat_template:
            check_chat_template(self.tokenizer)  # a template rmlab cannot split stops here, before any data is read
        # Chat templates carry their own special tokens; plain text gets the tokenizer's frame.
        self.frame = ([], [], []) if self.chat_template else special_token_frame(self.tokenizer)
        self.fractions = (val_fraction, test_fraction)
        self.num_workers = num_workers
        self.packing = resolve_packing(packing, tokenizer)
        self.group_by_length = group_by_length
        # Mitigations of surface artifacts (README "Debiasing"); conf/debias/*.yaml switch them on.
        for name, given, known in (("balance", balance, ("method", "cues")), ("augment", augment, ("share", "kinds"))):
            unknown = sorted(set(given or {}) - set(known))
            if unknown:
                raise ConfigError(f"unknown option(s) data.{name}.{unknown[0]}{' and more' if len(unknown) > 1 else ''}: "
                                  f"data.{name} takes {list(known)}")
        self.balance = {"method": "none", "cues": ["length"], **(balance or {})}
        if self.balance["method"] not in BALANCE_METHODS:
            raise ConfigError(f"data.balance.method={self.balance['method']!r}; choose one of {BALANCE_METHODS}")
        check_cues(self.balance["cues"])
        if length_matched and self.balance["method"] != "none" and "length" in self.balance["cues"]:
            raise ConfigError("data.length_matched already balances length batch by batch; with data.balance.method="
                              f"{self.balance['method']} on length too, the short-chosen pairs would be boosted twice. "
                              "Use one of them, or drop length from data.balance.cues")
        self.length_matched = length_matched
        self.augment = {"share": 0.0, "kinds": [], **(augment or {})}
        # Response sets (K responses per prompt): the training target from attribute scores, prompt turn markers.
        self.set_options = {"score_key": score_key, "score_weights": score_weights, "turn_markers": turn_markers}
        self.sets: bool | None = None  # True when the data is response sets (known after setup reads it)
        self.read_stats: dict[str, dict[str, int]] = {}  # response sets: the reader's counts per split
        self.train_weights: torch.Tensor | None = None  # data.balance: one weight per train pair, mean 1
        self.train_gaps: torch.Tensor | None = None  # data.length_matched: one length gap per train pair or set
        self.splits: dict[str, Dataset] = {}
        self.stats: dict[str, dict[str, int]] = {}

    # -- loading ---------------------------------------------------------------------------
    def _normalise(self, raw: Dataset, origin: str, split: str) -> Dataset:
        """The split's rows as pairs (rmlab.data.rows.normalise_rows); bad rows skipped are kept in
        `self.rejects` and counted, replies with extra fields counted."""
        pairs, rejects = normalise_rows(raw, origin, self.columns, self.format, self.on_bad_row)
        self.rejects += [{"split": split, **reject} for reject in rejects]
        self.rejected[split] = len(rejects)
        self._count_reply_fields(pairs, origin, split)
        return pairs.remove_columns(["reply_fields"])

    def _count_reply_fields(self, pairs: Dataset, origin: str, split: str) -> None:
        """Final replies with fields beside their content (e.g. tool_calls): a pair scores the reply's
        text only, so those fields are left out, and counted (data/<split>/reply_fields_dropped)."""
        dropped = [(where, fields) for where, fields in zip(pairs["origin"], pairs["reply_fields"]) if fields]
        self.reply_fields_dropped[split] = len(dropped)
        if dropped:
            log.warning("%s: %d final replies carry fields besides their content (%s), which a pair cannot score: only "
                        "the reply text is trained on (first: %s)", origin, len(dropped),
                        ", ".join(sorted({f for _, fields in dropped for f in fields.split(",")})), dropped[0][0])

    def _tokenize(self, pairs: Dataset, split: str) -> Dataset:
        tokenized = pairs.map(
            _tokenize_row,
            fn_kwargs={"tokenizer": self.tokenizer, "max_length": self.max_length, "overlong": self.overlong,
                       "chat_template": self.chat_template, "frame": self.frame},
            desc=f"tokenizing {split}",
        )
        kept = tokenized.filter(lambda keep: keep, input_columns="keep")
        kept, same_ids = self._reject_same_ids(kept, split)
        kept = kept.add_column("index", list(range(len(kept))))  # row id, so eval rewards map back to texts
        self.stats[split] = {
            "pairs": len(kept),
            "truncated_prompt": sum(tokenized["prompt_truncated"]),
            "truncated_response": sum(tokenized["response_truncated"]),
            "dropped": len(tokenized) - len(kept) - same_ids,
            "rejected": self.rejected.get(split, 0) + same_ids,
            "same_ids": same_ids,
            "unknown_responses": sum(kept["unknown_responses"]),
            "unrendered_tool_calls": sum(kept["unrendered_tool_calls"]),
            "reply_fields_dropped": self.reply_fields_dropped.get(split, 0),
        }
        log.info("%s: %s (max_length=%d, overlong=%s)", split, self.stats[split], self.max_length, self.overlong)
        self._warn_unreadable(kept, split)
        if len(kept) == 0:
            stats = self.stats[split]
            raise DataError(f"{split}: no pair left: {stats['dropped']} longer than data.max_length={self.max_length} "
                            f"(data.overlong={self.overlong}), {stats['same_ids']} whose responses tokenize alike, "
                            f"{self.rejected.get(split, 0)} bad rows. Give this split more pairs"
                            + (", or data.overlong=truncate" if stats["dropped"] else ""))
        return kept

    def _reject_same_ids(self, pairs: Dataset, split: str) -> tuple[Dataset, int]:
        """Pairs whose chosen and rejected sequences are the same token ids are bad rows, like
        chosen == rejected: with data.on_bad_row=error the first stops the run, with skip they are
        counted and kept in `self.rejects`. Counterfactual pairs (data.augment) are rmlab's own and
        are always skipped. Returns the other pairs and how many were set aside."""
        same = [i for i, flag in enumerate(pairs["same_ids"]) if flag]
        if not same:
            return pairs, 0
        rows = pairs.select(same)
        augmented = rows["augment"] if "augment" in rows.column_names else [""] * len(rows)
        for row, made_here in zip(rows, augmented):
            if row["response_truncated"]:
                problem = (f"chosen and rejected become the same token ids once cut to data.max_length={self.max_length} "
                           "(they differ only after it), so the pair cannot teach a preference; raise data.max_length")
            else:
                problem = ("chosen and rejected become the same token ids (the tokenizer reads them alike: characters "
                           "outside its vocabulary become its unknown token, some spacing is normalised away), so the pair "
                           "cannot teach a preference")
            if not made_here:
                bad_row(self.on_bad_row, row["origin"], problem)
            fields = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            self.rejects.append({"split": split, "origin": row["origin"], "problem": problem, "row": fields})
        log.warning("%s: %d pairs set aside whose two responses tokenize to the same ids (first: %s)", split, len(same),
                    rows[0]["origin"])
        return pairs.select(sorted(set(range(len(pairs))) - set(same))), len(same)

    def _warn_unreadable(self, pairs: Dataset, split: str) -> None:
        """Say when the backbone's vocabulary cannot read the data, or its chat template leaves tool calls out."""
        stats = self.stats[split]
        if stats["unknown_responses"]:
            first = next(origin for origin, n in zip(pairs["origin"], pairs["unknown_responses"]) if n)
            log.warning("%s: %d of %d responses contain the tokenizer's unknown token %r: the backbone cannot read parts of "
                        "them (e.g. emoji); first: %s", split, stats["unknown_responses"], 2 * len(pairs),
                        self.tokenizer.unk_token, first)
        if stats["unrendered_tool_calls"]:
            log.warning("%s: the chat template left out %d tool calls of the prompts (it does not render `tool_calls`): "
                        "the model does not see them. data.chat_template=false renders them as text", split,
                        stats["unrendered_tool_calls"])

    def setup(self, stage: str | None = None) -> None:
        """`fit` (and None) prepares every split; `validate` / `test` only the one they need, so a
        file of test pairs alone (data.test_path) can be evaluated."""
        needed = {"validate": ("val",), "test": ("test",)}.get(stage or "fit", SPLITS)
        if all(split in self.splits for split in needed):
            return
        raw = self.source()
        describe = getattr(self.source, "describe", lambda split: split)
        self.rejects, self.rejected, self.read_stats = [], {}, {}
        self.sets = self._holds_sets(raw)
        read = self._read_sets if self.sets else self._normalise
        normalised = {split: read(ds, describe(split), split) for split, ds in raw.items() if ds is not None}
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
        added = 0
        if "train" in needed and self.augment["share"]:
            normalised["train"], added = self._augment(normalised["train"])
        tokenize = self._tokenize_sets if self.sets else self._tokenize
        self.splits.update({split: tokenize(normalised[split], split) for split in needed})
        if self.rejects:
            self._report_rejects()
        aside = {split: self.stats[split].pop("augment_set_aside", 0) for split in needed}  # response sets only
        if "train" in needed:  # the counterfactuals kept; those whose rewrite tokenized as the original were set aside
            self.stats["train"]["augmented"] = added - aside["train"]
            if aside["train"]:
                self.stats["train"]["augment_set_aside"] = aside["train"]
            self._balance(self.splits["train"])
            if self.length_matched:
                self._match_lengths(self.splits["train"])

    # -- response sets ---------------------------------------------------------------------
    def _holds_sets(self, raw: dict[str, Dataset | None]) -> bool:
        """Is the data response sets? data.format says so, or (auto) the first readable row of the
        first split looks like one (rmlab.data.response_sets.is_set_row)."""
        if self.format != "auto":
            sets = self.format in SET_FORMATS
        else:
            first = next(ds for ds in raw.values() if ds is not None and len(ds))
            from_file = "raw" in first.column_names and "origin" in first.column_names
            row = next((json.loads(r["raw"]) for r in first if not r["problem"]), {}) if from_file else first[0]
            sets = isinstance(row, dict) and is_set_row(row, self.columns)
        return sets

    def _read_sets(self, raw: Dataset, origin: str, split: str) -> Dataset:
        """The split's response sets (rmlab.data.set_reader.read_sets); bad rows skipped are kept in `self.rejects`."""
        read = read_sets(raw, origin, split, self.format, self.columns, on_bad_row=self.on_bad_row, **self.set_options)
        self.rejects += read.rejects
        self.rejected[split] = len(read.rejects)
        self.read_stats[split] = read.stats
        return read.sets

    def _tokenize_sets(self, sets: Dataset, split: str) -> Dataset:
        settings = {"tokenizer": self.tokenizer, "max_length": self.max_length, "overlong": self.overlong,
                    "chat_template": self.chat_template, "frame": self.frame}
        # A split carved out of train has train's reader counts; its own are those of its sets.
        read_stats = self.read_stats.get(split, {**self.read_stats.get("train", {}), "rejected": 0})
        kept, self.stats[split], rejects = tokenize_sets(sets, split, settings, self.on_bad_row, read_stats)
        self.rejects += rejects
        return kept

    def _augment(self, train: Dataset) -> tuple[Dataset, int]:
        """Train pairs plus counterfactual pairs made from them (rmlab.data.augment); only train pairs
        are rewritten, so the evaluation probes of val/test stay held out. Response sets: each set
        lends its best and worst response as the pair to rewrite (a set of ties only lends none), and
        each counterfactual pair becomes a set of 2, the intact best response scored as the set's best,
        the rewrite as its worst."""
        if "augment" in train.column_names:
            raise DataError(f"{getattr(self.source, 'describe', lambda split: split)('train')}: the data has a column "
                            "named 'augment', the name data.augment marks its pairs with; rename that column")
        rows = train.to_list()
        if self.sets:
            rows = [{**row, "chosen": row["responses"][row["scores"].index(max(row["scores"]))],
                     "rejected": row["responses"][row["scores"].index(min(row["scores"]))]}
                    for row in rows if max(row["scores"]) > min(row["scores"])]
        extra = augment_pairs(rows, self.augment["share"], self.augment["kinds"], self.seed)
        if self.sets:
            extra = [{**{k: v for k, v in pair.items() if k not in ("chosen", "rejected")},
                      "responses": [pair["chosen"], pair["rejected"]], "scores": [max(pair["scores"]), min(pair["scores"])]}
                     for pair in extra]
        if "label_margin" in train.column_names:  # the source pair's margin was set for its own rejected answer
            extra = [{**pair, "label_margin": 0.0} for pair in extra]
        log.info("train: %d counterfactual %s added (data.augment: share %s of %s)", len(extra),
                 "sets of 2" if self.sets else "pairs", self.augment["share"], list(self.augment["kinds"]))
        train = train.add_column("augment", [""] * len(train))
        if not extra:
            return train, 0
        return concatenate_datasets([train, Dataset.from_list(extra, features=train.features)]), len(extra)

    def _balance(self, train: Dataset) -> None:
        """data.balance: per-pair (or per-set: rmlab.data.balance) weights under which no balanced cue predicts
        the chosen side (reweight: a `balance_weight` column the loss reads; resample: the sampler draws by them)."""
        method, cues = self.balance["method"], self.balance["cues"]
        signs = cue_signs(train, cues)
        stats = self.stats["train"]
        for j, cue in enumerate(cues):  # the share of pairs, among those where the cue differs, that favour chosen
            differ = signs[:, j] != 0
            stats[f"chosen_more_{cue}"] = round(float((signs[differ, j] > 0).double().mean()), 4) if differ.any() else math.nan
        if method == "none":
            return
        self.train_weights = balance_weights(signs, cues)
        stats["balance_effective_pairs"] = round(effective_pairs(self.train_weights), 1)
        stats["balance_max_weight"] = round(float(self.train_weights.max()), 3)
        log.info("train: data.balance=%s on %s: weights %.3g..%.3g, worth %.0f of %d %s", method, cues,
                 float(self.train_weights.min()), float(self.train_weights.max()),
                 stats["balance_effective_pairs"], len(train), "sets" if self.sets else "pairs")
        if method == "reweight":
            self.splits["train"] = train.add_column("balance_weight", self.train_weights.tolist())

    def _match_lengths(self, train: Dataset) -> None:
        """data.length_matched: the train split's length gaps (`self.train_gaps`, the sampler's), and a log line
        of what it will do: how many groups favour the longer response and how many the shorter, and how
        often the minority side is drawn (half of every batch comes from it)."""
        gaps = self.train_gaps = length_gaps(train)
        longer, shorter, even = int((gaps > 0).sum()), int((gaps < 0).sum()), int((gaps == 0).sum())
        minority = min(longer, shorter)
        log.info("train: data.length_matched: %d %s favour the longer response, %d the shorter, %d even; half of every "
                 "batch comes from each side, so each of the %d on the smaller side is drawn about %.1f times an epoch",
                 longer, "sets" if self.sets else "pairs", shorter, even, minority, len(train) / 2 / max(minority, 1))

    def _report_rejects(self) -> None:
        counts = dict(Counter(reject["split"] for reject in self.rejects))
        first = self.rejects[0]
        log.warning("skipped %d bad rows (data.on_bad_row=skip) %s, written to %s; first: %s: %s",
                    len(self.rejects), counts, self.rejects_file or "(no data.rejects_file)", first["origin"], first["problem"])
        if self.rejects_file:
            write_rejects(self.rejects_file, self.rejects)

    def encode_response(self, prompt: list[dict], response: str) -> list[int]:
        """Token ids the model reads for one (prompt, response), as in training; over-long ones are
        truncated (never dropped), so every response of a probe set gets a reward."""
        pair = {"prompt": prompt, "chosen": response, "rejected": response}
        return tokenize_pair(pair, self.tokenizer, self.max_length, "truncate", self.chat_template, self.frame)["chosen_input_ids"]

    # -- loaders ---------------------------------------------------------------------------
    def _lengths(self, dataset: Dataset) -> list[int]:
        """What a pair costs to pad: its longer sequence, or its packed row (chosen + rejected reply);
        a response set: all its tokens."""
        if self.sets:
            return [sum(len(ids) for ids in row) for row in dataset["input_ids"]]
        table = dataset.with_format("arrow")[:]
        chosen = pc.list_value_length(table["chosen_input_ids"])
        other = (table["rejected_response_tokens"] if self.packing == "shared_prompt"
                 else pc.list_value_length(table["rejected_input_ids"]))
        combine = pc.add if self.packing == "shared_prompt" else pc.max_element_wise
        return combine(chosen, other).to_pylist()

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        full = self.splits[split]
        if self.sets:
            columns = ["index", "input_ids", "scores", "response_tokens",
                       *(["balance_weight"] if "balance_weight" in full.column_names else [])]
        else:
            columns = ["index", "chosen_input_ids", "rejected_input_ids", "chosen_response_tokens", "rejected_response_tokens",
                       *(["label_margin"] if self.columns["margin"] else []),
                       *(["balance_weight"] if "balance_weight" in full.column_names else [])]
        dataset = full.select_columns(columns)
        batch_size = self.batch_size if split == "train" else self.eval_batch_size
        if shuffle:
            # The same seeded permutation for any number of processes, dealt out rank by rank: N
            # processes with batch_size b see, step by step, the pairs that 1 process with batch
            # N*b sees (Lightning keeps a DistributedSampler it is given, and sets its epoch).
            world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
            # length_matched builds its own batches: no length grouping to compute for it.
            lengths = self._lengths(full) if self.group_by_length and not self.length_matched else None
            sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                       skip=lambda: self._batches_done_in_epoch(len(sampler)) * self.batch_size,
                                       lengths=lengths, batch_size=batch_size * world,
                                       weights=self.train_weights if self.balance["method"] == "resample" else None,
                                       length_gaps=self.train_gaps)
        else:
            sampler = LengthSortedSampler(self._lengths(full))
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=self._collator(),
            num_workers=self.num_workers,
        )

    def _collator(self) -> Callable:
        """The batch layout (rmlab.data.batch): padded rows, or one packed row per pair or set."""
        if self.sets:
            return (PackedSetCollator(self.tokenizer.pad_token_id) if self.packing == "shared_prompt"
                    else SetCollator(self.tokenizer.pad_token_id, self.tokenizer.padding_side))
        return make_collator(self.packing, self.tokenizer.pad_token_id, self.tokenizer.padding_side)

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
