"""Score a file with a reward model: `python -m rmlab.score model_path=<export dir | .ckpt> data.path=rows.jsonl out=scores.jsonl`.

Rows are (prompt, response) -> `reward`, preference pairs in any training format -> `reward_chosen`,
`reward_rejected`, `reward_margin` (their difference), or response sets (a prompt and a list of
`responses`, scored or not) -> `rewards`, one per response, each response scored on its own. Every
input row and field is written back in input order; over-long
inputs are truncated as in training (prompt cut from the left) and counted. The model is an
rmlab.export folder (plain transformers plus the tokenization settings stored in its config.json)
or an rmlab.train checkpoint (rmlab's RewardModel); both give the same rewards.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from rmlab.config import CONFIG_DIR
from rmlab.data.files import read_file_rows
from rmlab.data.formats import FORMATS, PairFormatError, _as_messages, detect_format, to_pair
from rmlab.errors import DataError
from rmlab.launch import short_user_errors
from rmlab.trained import Scorer, score_sequences, tokenizing_function, write_rows

log = logging.getLogger(__name__)
SINGLE = "single"  # one (prompt, response) per row
SETS = "sets"      # a prompt and a list of responses per row


def read_rows(path: str) -> list[tuple[str, Any]]:
    """(location, row) for every row of a JSONL / JSON / Parquet / CSV file, in file order; a row
    that cannot be read stops with its line (rmlab.data.files)."""
    rows = []
    for row in read_file_rows(path):
        if row.problem:
            raise DataError(f"{path} {row.location}: {row.problem}")
        rows.append((row.location, row.data))
    return rows


def row_format(first: Any, fmt: str, columns: dict) -> str:
    """`single` for prompt + response rows, else the pair format (named, or detected from the first row)."""
    if fmt != "auto":
        if fmt not in (SINGLE, SETS, *FORMATS):
            raise ValueError(f"data.format={fmt!r}; choose auto, {SINGLE}, {SETS} or one of {FORMATS}")
        return fmt
    if isinstance(first, dict) and columns["response"] in first and columns["chosen"] not in first:
        return SINGLE
    if isinstance(first, dict) and isinstance(first.get(columns["responses"]), list):
        return SETS
    return detect_format(first if isinstance(first, dict) else {}, columns)


def to_item(row: Any, fmt: str, columns: dict) -> dict:
    """{prompt: messages, responses: [response] or [chosen, rejected]} of one row."""
    if not isinstance(row, dict):
        raise PairFormatError(f"expected an object with named fields, got {type(row).__name__}")
    if fmt == SETS:
        prompt, responses = row.get(columns["prompt"]), row.get(columns["responses"])
        if prompt is None or not isinstance(responses, list) or not responses:
            raise PairFormatError(f"missing {columns['prompt']!r}, or {columns['responses']!r} is not a list of responses")
        texts = [r.get("content") if isinstance(r, dict) else r for r in responses]  # strings or assistant messages
        if not all(isinstance(t, str) for t in texts):
            raise PairFormatError(f"every item of {columns['responses']!r} must be a string or a message with a string content")
        return {"prompt": _as_messages(prompt, f"column {columns['prompt']!r}"), "responses": texts, "separately": True}
    if fmt == SINGLE:
        prompt, response = row.get(columns["prompt"]), row.get(columns["response"])
        if prompt is None or response is None:
            raise PairFormatError(f"missing {columns['prompt']!r} or {columns['response']!r}")
        if not isinstance(response, str):
            raise PairFormatError(f"column {columns['response']!r} must be a string, got {type(response).__name__}")
        pair = to_pair({columns["prompt"]: prompt, "chosen": response, "rejected": response}, "prompt_response",
                       {"prompt": columns["prompt"], "chosen": "chosen", "rejected": "rejected"})
        return {"prompt": pair["prompt"], "responses": [response]}
    pair = to_pair(row, fmt, columns)
    return {"prompt": pair["prompt"], "responses": [pair["chosen"], pair["rejected"]], "reply_fields": pair.get("reply_fields")}


def read_items(path: str, fmt: str, columns: dict, fields: dict) -> tuple[list[tuple[str, Any]], list[dict], str]:
    """Rows of the file, each read as an item (to_item), and the format; a bad row stops with its line."""
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path}: no rows")
    fmt = row_format(rows[0][1], fmt, columns)
    added = ([fields["reward"]] if fmt == SINGLE else [fields["rewards"]] if fmt == SETS
             else [fields["reward_chosen"], fields["reward_rejected"], fields["reward_margin"]])
    items = []
    for location, row in rows:
        try:
            items.append(to_item(row, fmt, columns))
        except (PairFormatError, TypeError, ValueError) as err:
            raise ValueError(f"{path} {location}: {err} (format {fmt!r})") from None
        taken = [name for name in added if name in row]
        if taken:
            raise ValueError(f"{path} {location}: already has a field {taken[0]!r}, which scoring would overwrite; "
                             f"name the output differently with fields.<name>=... (fields: {fields})")
    return rows, items, fmt


def tokenize_items(scorer: Scorer, rows: list[tuple[str, Any]], items: list[dict], path: str) -> tuple[list[list[int]], dict]:
    """Token ids of every response (a pair's chosen, then its rejected) and the locations of flagged rows:
    truncated to max_length as in training, {"prompt": [...], "response": [...]}, also logged; with
    the rows whose responses hold the unknown token, whose prompt tool calls the chat template left out,
    or whose final reply had fields a pair cannot carry (as training counts them): logged, and
    under "unknown_responses", "unrendered_tool_calls", "reply_fields_dropped"."""
    encode = tokenizing_function(scorer.tokenizer, scorer.settings)
    sequences, flagged = [], {"prompt": [], "response": [], "unknown_responses": [], "unrendered_tool_calls": [],
                                "reply_fields_dropped": []}
    for (location, _), item in zip(tqdm(rows, desc="tokenizing", unit="row"), items):
        # A set's responses are scored each on its own (as a best-of-N sampler scores its samples).
        encodings = [encode(item["prompt"], r) for r in item["responses"]] if item.get("separately") else \
            [encode(item["prompt"], *item["responses"])]
        per_encoding = 1 if item.get("separately") else len(item["responses"])
        for encoded in encodings:
            sequences += [encoded["chosen_input_ids"], encoded["rejected_input_ids"]][:per_encoding]
        encoded = {key: any(e[key] for e in encodings) for key in ("prompt_truncated", "response_truncated",
                                                                    "unknown_responses", "unrendered_tool_calls")}
        for part in ("prompt", "response"):
            if encoded[f"{part}_truncated"]:
                flagged[part].append(location)
        for count in ("unknown_responses", "unrendered_tool_calls"):
            if encoded[count]:
                flagged[count].append(location)
        if item.get("reply_fields"):
            flagged["reply_fields_dropped"].append(location)
    for count, what in (("unknown_responses", f"responses contain the tokenizer's unknown token {scorer.tokenizer.unk_token!r} "
                                              "(the model cannot read parts of them)"),
                        ("unrendered_tool_calls", "prompts have tool calls that the chat template left out"),
                        ("reply_fields_dropped", "final replies carry fields besides their text, which are not scored")):
        if flagged[count]:
            log.warning("%s: %d rows whose %s; first: %s", path, len(flagged[count]), what, flagged[count][0])
    if flagged["prompt"] or flagged["response"]:
        log.warning("%s: %d rows longer than max_length=%d, truncated as in training (kept): prompt cut from the left "
                    "in %d (first: %s), response cut at its end in %d (first: %s)", path,
                    len(set(flagged["prompt"] + flagged["response"])), scorer.settings["max_length"],
                    len(flagged["prompt"]), ", ".join(flagged["prompt"][:5]) or "-",
                    len(flagged["response"]), ", ".join(flagged["response"][:5]) or "-")
    return sequences, flagged


def score(cfg: DictConfig) -> dict:
    """Score every row of cfg.data.path into cfg.out; return counts."""
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision={cfg.precision!r}; choose fp32 or bf16")
    fields = OmegaConf.to_container(cfg.fields)
    path = cfg.data.path
    rows, items, fmt = read_items(path, cfg.data.format, OmegaConf.to_container(cfg.data.columns), fields)

    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    scorer = Scorer(cfg.model_path, cfg.trust_remote_code, device)
    sequences, flagged = tokenize_items(scorer, rows, items, path)
    rewards = score_sequences(scorer, sequences, cfg.batch_size, cfg.sort_window, cfg.precision)
    scored, flat = [], iter(rewards)
    for index, (_, row) in enumerate(rows):
        if fmt == SETS:
            scored.append({**row, fields["rewards"]: [next(flat) for _ in items[index]["responses"]]})
        elif fmt == SINGLE:
            scored.append({**row, fields["reward"]: rewards[index]})
        else:
            chosen, rejected = rewards[2 * index], rewards[2 * index + 1]
            scored.append({**row, fields["reward_chosen"]: chosen, fields["reward_rejected"]: rejected,
                           fields["reward_margin"]: chosen - rejected})
    write_rows(cfg.out, scored)
    summary = {"rows": len(rows), "sequences": len(sequences), "format": fmt, "truncated_prompt": len(flagged["prompt"]),
               "truncated_response": len(flagged["response"]), "precision": cfg.precision, "out": str(cfg.out),
               **{count: len(flagged[count]) for count in ("unknown_responses", "unrendered_tool_calls", "reply_fields_dropped")}}
    log.info("scored %s with %s: %s", path, cfg.model_path, summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="score")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> None:
    score(cfg)


if __name__ == "__main__":
    main()
