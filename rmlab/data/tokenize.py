"""Turn a normalised pair into token ids, with the over-long policy applied and counted."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import PreTrainedTokenizerBase

from rmlab.data.formats import template_messages
from rmlab.errors import ConfigError

OVERLONG_POLICIES = ("truncate", "drop")
_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}


def use_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: str | bool) -> bool:
    """`auto`: render with the tokenizer's chat template when it has one."""
    if chat_template == "auto":
        return tokenizer.chat_template is not None
    if chat_template and tokenizer.chat_template is None:
        raise ConfigError("data.chat_template=true but the tokenizer has no chat template; use data.chat_template=auto or false")
    return bool(chat_template)


def reply_start(generation_prompt: str, full: str, response: str) -> int:
    """Where the reply begins in a chat template's rendering of the whole conversation (`full`).

    Usually `full` starts with the prompt rendered with a generation prompt, and the reply follows
    it. Templates whose generation prompt pre-fills the assistant turn (reasoning models: it ends in
    an opening `<think>` that the rendered conversation does not have) diverge inside it: the reply
    then starts where the two renderings part, never after where the reply's own text begins.
    """
    cut = len(os.path.commonprefix([generation_prompt, full]))
    at = full.rfind(response)
    return min(cut, at) if at >= 0 else cut


def _tool_calls(message: dict[str, Any]) -> list[tuple[str, str]]:
    """(function name, arguments as text) of a message's tool calls (OpenAI's layout, or flat)."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        arguments = function.get("arguments", "")
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        calls.append((str(function.get("name", "")), text))
    return calls


def _plain_turn(message: dict[str, Any]) -> str:
    """One message as `Role: content`, tool calls as `[tool call: name(arguments)]` lines."""
    role = _PLAIN_ROLES.get(message["role"], message["role"])
    if message["role"] == "tool" and message.get("name"):
        role = f"{role} ({message['name']})"
    lines = [f"{role}: {message['content']}" if message["content"] else f"{role}:"]  # a tool-call turn may have no text
    lines += [f"[tool call: {name}({arguments})]" for name, arguments in _tool_calls(message)]
    return "\n".join(lines)


def render(prompt: list[dict[str, Any]], response: str, tokenizer, chat_template: bool) -> tuple[str, str]:
    """Prompt text and response text; their concatenation is what the model reads. Messages reach
    the chat template with all their fields (tool_calls, name, ...); without a template, rmlab
    writes the turns itself, tool calls included.

    Raises ValueError when the template's rendering does not contain the reply."""
    messages = template_messages(prompt)
    if chat_template:
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        generation_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        cut = reply_start(generation_prompt, full, response)
        if response.strip() not in full[cut:]:
            raise ValueError("the chat template's rendering of a conversation does not contain its final reply")
        return full[:cut], full[cut:]
    if len(messages) == 1 and messages[0]["role"] == "user" and not _tool_calls(messages[0]):
        return messages[0]["content"], response
    return "\n\n".join(_plain_turn(m) for m in messages) + "\n\nAssistant:", response


def plain_chat_template(tokenizer: PreTrainedTokenizerBase, frame: tuple[list[int], list[int], list[int]]) -> str:
    """A Jinja chat template that writes what render(..., chat_template=False) writes, in `frame`
    (BERT: `[CLS] prompt [SEP] response [SEP]`): one user turn as its text, else `Role: text` turns
    (tool calls as `[tool call: name(arguments)]` lines) and `Assistant:`. rmlab.export gives it to
    models trained without a template, so consumers that apply a chat template get rmlab's inputs."""
    before, between, after = (json.dumps("".join(tokenizer.convert_ids_to_tokens(ids))) for ids in frame)
    roles = json.dumps(_PLAIN_ROLES)
    turn = ("{%- set role = " + roles + ".get(m['role'], m['role']) -%}"
            "{%- if m['role'] == 'tool' and m.get('name') -%}{%- set role = role ~ ' (' ~ m['name'] ~ ')' -%}{%- endif -%}"
            "{{- role ~ ':' ~ ((' ' ~ m['content']) if m['content'] else '') -}}"
            "{%- for c in (m.get('tool_calls') or []) -%}{%- set f = c.get('function', c) -%}"
            "{%- set args = f.get('arguments', '') -%}"
            "{{- '\n[tool call: ' ~ f.get('name', '') ~ '(' ~ (args if args is string else args | tojson) ~ ')]' -}}"
            "{%- endfor -%}")
    return (
        "{%- if messages[-1]['role'] == 'assistant' -%}{%- set prompt = messages[:-1] -%}"
        "{%- else -%}{%- set prompt = messages -%}{%- endif -%}"
        "{{- " + before + " -}}"
        "{%- if prompt | length == 1 and prompt[0]['role'] == 'user' and not prompt[0].get('tool_calls') -%}"
        "{{- prompt[0]['content'] -}}"
        "{%- else -%}{%- for m in prompt -%}" + turn + "{{- '\n\n' -}}{%- endfor -%}{{- 'Assistant:' -}}{%- endif -%}"
        "{{- " + between + " -}}"
        "{%- if messages[-1]['role'] == 'assistant' -%}{{- messages[-1]['content'] ~ " + after + " -}}{%- endif -%}"
    )


def unrendered_tool_calls(prompt: list[dict[str, Any]], prompt_text: str) -> int:
    """Tool calls of the prompt whose function name the rendered prompt does not contain: a chat
    template that ignores `tool_calls` drops them (counted by the DataModule, never silently)."""
    return sum(name not in prompt_text for m in template_messages(prompt) for name, _ in _tool_calls(m))


def check_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Render one small conversation, so that a template rmlab cannot split into prompt and reply
    stops the run before any data is read."""
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    try:
        render(prompt, "It is 4.", tokenizer, True)
    except Exception as error:  # jinja errors, or a template that drops the reply
        raise ConfigError(f"the tokenizer's chat template cannot be split into prompt and reply ({type(error).__name__}: "
                          f"{error}); train on plain text with data.chat_template=false") from None


def end_at_eos(response_text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The rendered response cut right after its last eos token (ChatML templates append "\\n" to
    <|im_end|>): a reward is trained where a generated response ends, which is where a policy's
    sampled ids and a consumer's chat template (rmlab.export) end. Unchanged without an eos token."""
    eos = tokenizer.eos_token
    end = response_text.rfind(eos) if eos else -1
    return response_text if end < 0 else response_text[:end + len(eos)]


def special_token_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer puts before, between and after a text pair.

    BERT: ([CLS], [SEP], [SEP]); GPT-2: ([], [], []). Read off one encoded pair, because
    transformers no longer exposes `build_inputs_with_special_tokens` on every tokenizer.
    """
    first, second = (tokenizer(text, add_special_tokens=False)["input_ids"] for text in ("first", "second"))
    full = tokenizer("first", "second")["input_ids"]
    i = _find(full, first)
    j = _find(full, second, start=i + len(first)) if i >= 0 else -1
    if j < 0:
        raise ValueError(f"cannot locate the text pair inside {type(tokenizer).__name__}'s special-token template")
    return full[:i], full[i + len(first):j], full[j + len(second):]


def _find(sequence: list[int], part: list[int], start: int = 0) -> int:
    """Index of the first occurrence of `part` in `sequence` at or after `start`, else -1."""
    return next((i for i in range(start, len(sequence) - len(part) + 1) if sequence[i:i + len(part)] == part), -1)


def tokenize_set(
    prompt: list[dict[str, Any]],
    responses: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overlong: str = "truncate",
    chat_template: bool = False,
    frame: tuple[list[int], list[int], list[int]] = ([], [], []),
) -> dict[str, Any]:
    """Token ids of `prompt + response` for each of K >= 1 responses, all within max_length.

    Over-long sets: `truncate` keeps every response whole and cuts the prompt from the left (the
    same prompt tokens for all); a response that alone exceeds the budget is cut at its end. `drop`
    marks the set `keep=False`. Every case is flagged so the caller can count it. Returns
    `input_ids` and `response_tokens` (K each, in response order), `prompt_truncated`,
    `response_truncated`, `keep`, `duplicate_ids` (responses whose ids equal an earlier one's, e.g.
    emoji read as [UNK]), `unknown_responses` (responses holding the unknown token) and
    `unrendered_tool_calls` (prompt tool calls the chat template left out).
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"data.overlong={overlong!r}; choose one of {OVERLONG_POLICIES}")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    rendered = [render(prompt, response, tokenizer, chat_template) for response in responses]
    prompt_text = rendered[0][0]
    texts = [text for _, text in rendered]
    if any(other != prompt_text for other, _ in rendered):  # a pre-filled turn some replies start like: share what all share
        prompt_text = os.path.commonprefix([other for other, _ in rendered])
        texts = [other[len(prompt_text):] + text for other, text in rendered]
    if chat_template:  # end at the end-of-turn token, as a generated response does
        texts = [end_at_eos(text, tokenizer) for text in texts]
    prompt_ids, response_ids = encode(prompt_text), [encode(text) for text in texts]
    # Chat templates carry their own special tokens; plain text gets the model's `frame`
    # ([CLS] prompt [SEP] response [SEP] for BERT), from special_token_frame.
    before, between, after = frame
    budget = max_length - len(before) - len(between) - len(after)
    longest = max(len(ids) for ids in response_ids)
    fits = len(prompt_ids) + longest <= budget
    prompt_truncated = response_truncated = False
    if not fits and overlong == "truncate":
        keep_prompt = max(budget - longest, 0)
        prompt_truncated = keep_prompt < len(prompt_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        if longest > budget:
            response_truncated = True
            response_ids = [ids[:budget] for ids in response_ids]

    input_ids = [before + prompt_ids + between + ids + after for ids in response_ids]
    unknown = tokenizer.unk_token_id
    return {
        "input_ids": input_ids,
        "response_tokens": [len(ids) for ids in response_ids],
        "prompt_truncated": prompt_truncated,
        "response_truncated": response_truncated,
        "keep": fits or overlong == "truncate",
        "duplicate_ids": sum(ids in input_ids[:k] for k, ids in enumerate(input_ids)),
        "unknown_responses": 0 if unknown is None else sum(unknown in ids for ids in response_ids),
        "unrendered_tool_calls": unrendered_tool_calls(prompt, prompt_text) if chat_template else 0,
    }


def tokenize_pair(
    pair: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overlong: str = "truncate",
    chat_template: bool = False,
    frame: tuple[list[int], list[int], list[int]] = ([], [], []),
) -> dict[str, Any]:
    """Token ids of `prompt + chosen` and `prompt + rejected`, both within max_length: tokenize_set
    of the pair's two responses, with pair names (`chosen_input_ids`, `rejected_input_ids`,
    `chosen_response_tokens`, `rejected_response_tokens`, and `same_ids` for a pair whose two
    sequences are the same ids); the over-long rules and flags are tokenize_set's.
    """
    out = tokenize_set(pair["prompt"], [pair["chosen"], pair["rejected"]], tokenizer, max_length, overlong,
                       chat_template, frame)
    (chosen, rejected), (chosen_tokens, rejected_tokens) = out.pop("input_ids"), out.pop("response_tokens")
    out.pop("duplicate_ids")
    return {"chosen_input_ids": chosen, "rejected_input_ids": rejected, "chosen_response_tokens": chosen_tokens,
            "rejected_response_tokens": rejected_tokens, **out, "same_ids": chosen == rejected}
