"""Preference-pair formats: raw rows -> one normalised pair (prompt messages, chosen text, rejected text).

Supported row formats:
- `prompt_response`: `prompt`, `chosen`, `rejected` strings.
- `hh`: HH-RLHF transcripts in `chosen` and `rejected` ("\\n\\nHuman: ...\\n\\nAssistant: ..."), which
  share every turn but the last assistant reply.
- `chat`: `chosen` and `rejected` as lists of {role, content} messages ending in the assistant
  reply; the prompt is their shared prefix, or an optional `prompt` column (string or messages).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

FORMATS = ("prompt_response", "hh", "chat")
ROLES = ("system", "user", "assistant", "tool")  # what chat templates render
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class PairFormatError(ValueError):
    """A row that cannot be read as a preference pair."""


def detect_format(row: dict[str, Any], columns: dict[str, str]) -> str:
    """Guess the format from the first row."""
    chosen, prompt = row.get(columns["chosen"]), row.get(columns["prompt"])
    if isinstance(chosen, list):
        return "chat"
    if isinstance(chosen, str) and prompt is None and _HH_ASSISTANT in chosen:
        return "hh"
    if isinstance(chosen, str) and prompt is not None:
        return "prompt_response"
    raise PairFormatError(
        f"cannot detect the pair format from columns {sorted(row)}; expected {columns['prompt']!r}/"
        f"{columns['chosen']!r}/{columns['rejected']!r} strings, HH transcripts in "
        f"{columns['chosen']!r}/{columns['rejected']!r}, or chat-message lists. Set data.columns.* "
        f"or data.format to one of {FORMATS}."
    )


def _split_hh(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Shared prompt turns and the two final replies of an HH-RLHF pair.

    The prompt is everything up to the last "\n\nAssistant:" the two transcripts share, as in the
    data's definition (they differ only in the final reply). Splitting each transcript at its own
    last turn instead breaks on replies that contain "Human:" or "\n\nAssistant:" themselves
    (5 of the 2,312 harmless-base test pairs).
    """
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise PairFormatError("chosen and rejected transcripts share no '\\n\\nAssistant:' turn")
    parts = _HH_TURN.split(chosen[:cut])  # [preamble, role, text, role, text, ...]
    prompt = [{"role": _HH_ROLES[role], "content": text.strip()} for role, text in zip(parts[1::2], parts[2::2])]
    if parts[0].strip():
        prompt.insert(0, {"role": "system", "content": parts[0].strip()})
    start = cut + len(_HH_ASSISTANT)
    return prompt, chosen[start:].strip(), rejected[start:].strip()


def _as_messages(value: Any, what: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)):
        raise PairFormatError(f"{what} must be a string or a non-empty list of {{role, content}} messages, got "
                              f"{type(value).__name__ if value != [] else 'an empty list'}")
    for number, message in enumerate(value, start=1):
        if message["role"] not in ROLES:
            raise PairFormatError(f"{what}: message {number} has role {message['role']!r}; known roles are {ROLES}")
        if not isinstance(message["content"], str):
            raise PairFormatError(f"{what}: message {number} content must be a string, got {type(message['content']).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PairFormatError(f"{what} must be a string, got {type(value).__name__}")
    return value


def to_pair(row: dict[str, Any], fmt: str, columns: dict[str, str]) -> dict[str, Any]:
    """Normalise one row to {prompt: [messages], chosen: str, rejected: str}."""
    if not isinstance(row, Mapping):
        raise PairFormatError(f"expected an object with named fields, got {type(row).__name__}")
    chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
    if chosen is None or rejected is None:
        raise PairFormatError(f"missing {columns['chosen']!r} or {columns['rejected']!r}")
    if fmt == "prompt_response":
        if row.get(columns["prompt"]) is None:
            raise PairFormatError(f"missing {columns['prompt']!r}")
        prompt = _as_messages(row.get(columns["prompt"]), f"column {columns['prompt']!r}")
        return {"prompt": prompt, "chosen": _text(chosen, "chosen"), "rejected": _text(rejected, "rejected")}
    if fmt == "hh":
        prompt, chosen_reply, rejected_reply = _split_hh(_text(chosen, "chosen"), _text(rejected, "rejected"))
        return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}
    if fmt == "chat":
        chosen_msgs = _as_messages(chosen, "chosen")
        rejected_msgs = _as_messages(rejected, "rejected")
        for msgs, side in ((chosen_msgs, "chosen"), (rejected_msgs, "rejected")):
            if msgs[-1]["role"] != "assistant":
                raise PairFormatError(f"{side} does not end with an assistant message")
        if row.get(columns["prompt"]) is not None:
            prompt = _as_messages(row[columns["prompt"]], f"column {columns['prompt']!r}")
        elif chosen_msgs[:-1] == rejected_msgs[:-1]:
            prompt = chosen_msgs[:-1]
        else:
            raise PairFormatError("chosen and rejected conversations differ before their last message")
        return {"prompt": prompt, "chosen": chosen_msgs[-1]["content"], "rejected": rejected_msgs[-1]["content"]}
    raise PairFormatError(f"unknown data.format {fmt!r}; choose one of {FORMATS} or 'auto'")


def check_pair(pair: dict[str, Any]) -> None:
    """Refuse a pair that cannot teach a preference: an empty response, or two identical ones."""
    for side in ("chosen", "rejected"):
        if not pair[side].strip():
            raise PairFormatError(f"{side} is empty" + (" (whitespace only)" if pair[side] else ""))
    if pair["chosen"] == pair["rejected"]:
        raise PairFormatError("chosen and rejected are the same text")


def read_margin(value: Any, column: str) -> float:
    """The pair's margin (how much better chosen is, for BradleyTerryLoss): a finite number >= 0."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise PairFormatError(f"margin column {column!r} is missing or empty")
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise PairFormatError(f"margin column {column!r} is not a number: {value!r}") from None
    if not math.isfinite(margin):
        raise PairFormatError(f"margin column {column!r} is {margin}")
    if margin < 0:
        raise PairFormatError(f"margin column {column!r} is negative ({margin}): it says how much better chosen "
                              "is; swap chosen and rejected, or fix the column")
    return margin


def prompt_key(prompt: list[dict[str, str]]) -> str:
    """A stable string identifying a prompt, for splitting by prompt."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)
