"""Preference-pair formats: raw rows -> one normalised pair (prompt messages, chosen text, rejected text).

Supported row formats:
- `prompt_response`: `prompt`, `chosen`, `rejected` strings.
- `hh`: HH-RLHF transcripts in `chosen` and `rejected` ("\\n\\nHuman: ...\\n\\nAssistant: ..."), which
  share every turn but the last assistant reply.
- `chat`: `chosen` and `rejected` as lists of {role, content, ...} messages ending in the assistant
  reply; the prompt is the conversation before that reply, which both must share. An optional
  `prompt` column is either how both conversations start (then they are used whole) or the context
  of replies that hold only assistant/tool turns (TRL's explicit-prompt layout). Messages keep
  their other fields (tool_calls, name, tool_call_id, ...) for the chat template.
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
FLOAT32_MAX = 3.4028234663852886e38


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


def _as_messages(value: Any, what: str) -> list[dict[str, Any]]:
    """Chat messages {role, content, ...}: every other field of a message (tool_calls, name,
    tool_call_id, ...) is kept for the chat template, None-valued ones dropped. A string is one user message."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value)):
        raise PairFormatError(f"{what} must be a string or a non-empty list of {{role, content}} messages, got "
                              f"{type(value).__name__ if value != [] else 'an empty list'}")
    messages = []
    for number, message in enumerate(value, start=1):
        if message["role"] not in ROLES:
            raise PairFormatError(f"{what}: message {number} has role {message['role']!r}; known roles are {ROLES}")
        content = message.get("content")
        fields = {k: v for k, v in message.items() if k not in ("role", "content") and v is not None}
        # An assistant turn that only calls tools may have no content (OpenAI's format: null).
        if not isinstance(content, str) and not (content is None and fields.get("tool_calls")):
            raise PairFormatError(f"{what}: message {number} content must be a string, got {type(content).__name__}")
        messages.append({"role": message["role"], "content": content, **fields})
    return messages


def stored_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as a `datasets` column holds them: {role, content, fields}, the other fields as JSON
    text (None when there are none), so that rows with different fields share one Arrow schema."""
    def fields(message: dict[str, Any]) -> str | None:
        extra = {k: v for k, v in message.items() if k not in ("role", "content", "fields") and v is not None}
        return json.dumps(extra, sort_keys=True, ensure_ascii=False) if extra else message.get("fields")

    return [{"role": m["role"], "content": m["content"], "fields": fields(m)} for m in messages]


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages (as to_pair or stored_messages give them) as a chat template takes them: every field
    in place, and a missing content as "" (templates concatenate it)."""
    out = []
    for message in messages:
        fields = message.get("fields")
        extra = json.loads(fields) if isinstance(fields, str) else {k: v for k, v in message.items()
                                                                    if k not in ("role", "content", "fields") and v is not None}
        out.append({"role": message["role"], "content": message.get("content") or "", **extra})
    return out


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PairFormatError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _same_turn(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return {**a, "content": a["content"] or ""} == {**b, "content": b["content"] or ""}


def _starts_with(conversation: list[dict[str, Any]], prompt: list[dict[str, Any]]) -> bool:
    """The conversation opens with the prompt's messages (system messages before them allowed when the
    prompt has none: a `prompt` string is the first user turn)."""
    if prompt[0]["role"] != "system":
        conversation = conversation[next((i for i, m in enumerate(conversation) if m["role"] != "system"), 0):]
    return len(conversation) > len(prompt) and all(_same_turn(a, b) for a, b in zip(conversation, prompt))


def _conversation(prompt: list[dict[str, Any]] | None, messages: list[dict[str, Any]], side: str, column: str) -> list[dict[str, Any]]:
    """One side's whole conversation: the messages alone when they hold their context (the
    `prompt` column, if any, must then be how they start), or prompt + messages when the side holds
    only assistant/tool turns (TRL's explicit-prompt layout)."""
    if prompt is None:
        return messages
    if all(m["role"] in ("assistant", "tool") for m in messages):
        return prompt + messages
    if _starts_with(messages, prompt):
        return messages
    first = next((m for m in messages if m["role"] != "system"), messages[0])
    raise PairFormatError(f"column {column!r} ({(prompt[0]['content'] or '')[:60]!r}) is not how the {side} conversation starts "
                          f"({first['role']}: {(first['content'] or '')[:60]!r}); give the conversation without that "
                          "column, or fix the column")


def to_pair(row: dict[str, Any], fmt: str, columns: dict[str, str]) -> dict[str, Any]:
    """Normalise one row to {prompt: [messages], chosen: str, rejected: str}.

    In the chat format the prompt is the whole conversation before the final reply (earlier
    assistant and tool turns included), with or without a `prompt` column. A final reply with fields
    besides its content (e.g. tool_calls), which a pair cannot carry, adds `reply_fields`: their
    names, comma-separated, for the caller to count.
    """
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
        given = row.get(columns["prompt"])
        prompt = _as_messages(given, f"column {columns['prompt']!r}") if given is not None else None
        sides = {}
        for side, value in (("chosen", chosen), ("rejected", rejected)):
            sides[side] = _conversation(prompt, _as_messages(value, side), side, columns["prompt"])
            if sides[side][-1]["role"] != "assistant":
                raise PairFormatError(f"{side} does not end with an assistant message")
            if sides[side][-1]["content"] is None:
                raise PairFormatError(f"{side}: the final assistant message has no content to score")
        context, other = sides["chosen"][:-1], sides["rejected"][:-1]
        if len(context) != len(other) or not all(_same_turn(a, b) for a, b in zip(context, other)):
            raise PairFormatError("chosen and rejected conversations differ before their last message")
        pair = {"prompt": context, "chosen": sides["chosen"][-1]["content"], "rejected": sides["rejected"][-1]["content"]}
        dropped = sorted({k for side in sides.values() for k in side[-1] if k not in ("role", "content")})
        return {**pair, "reply_fields": ",".join(dropped)} if dropped else pair
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
    if abs(margin) > FLOAT32_MAX:  # finite here, infinite once training reads it as float32
        raise PairFormatError(f"margin column {column!r} is {margin:g}, beyond float32's largest value ({FLOAT32_MAX:.4g}), "
                              "which training computes in; margins are reward differences, usually below 10")
    if margin < 0:
        raise PairFormatError(f"margin column {column!r} is negative ({margin}): it says how much better chosen "
                              "is; swap chosen and rejected, or fix the column")
    return margin


def prompt_key(prompt: list[dict[str, Any]]) -> str:
    """A stable string identifying a prompt (messages as to_pair gives them), for splitting by prompt."""
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)
