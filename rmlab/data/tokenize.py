"""Turn a normalised pair into token ids, with the over-long policy applied and counted."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

OVERLONG_POLICIES = ("truncate", "drop")
_PLAIN_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}


def use_chat_template(tokenizer: PreTrainedTokenizerBase, chat_template: str | bool) -> bool:
    """`auto`: render with the tokenizer's chat template when it has one."""
    if chat_template == "auto":
        return tokenizer.chat_template is not None
    if chat_template and tokenizer.chat_template is None:
        raise ValueError("data.chat_template=true but the tokenizer has no chat template")
    return bool(chat_template)


def render(prompt: list[dict[str, str]], response: str, tokenizer, chat_template: bool) -> tuple[str, str]:
    """Prompt text and response text; their concatenation is what the model reads."""
    if chat_template:
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently with and without a reply")
        return prompt_text, full[len(prompt_text):]
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        return prompt[0]["content"], response
    turns = [f"{_PLAIN_ROLES.get(m['role'], m['role'])}: {m['content']}" for m in prompt]
    return "\n\n".join(turns) + "\n\nAssistant:", response


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


def tokenize_pair(
    pair: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    overlong: str = "truncate",
    chat_template: bool = False,
    frame: tuple[list[int], list[int], list[int]] = ([], [], []),
) -> dict[str, Any]:
    """Token ids of `prompt + chosen` and `prompt + rejected`, both within max_length.

    Over-long pairs: `truncate` keeps both responses whole and cuts the prompt from the left
    (the same prompt tokens for both sides); a response that alone exceeds the budget is cut at
    its end. `drop` marks the pair `keep=False`. Every case is flagged so the caller can count it.
    """
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"data.overlong={overlong!r}; choose one of {OVERLONG_POLICIES}")
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt_text, chosen_text = render(pair["prompt"], pair["chosen"], tokenizer, chat_template)
    _, rejected_text = render(pair["prompt"], pair["rejected"], tokenizer, chat_template)
    if chat_template:  # end at the end-of-turn token, as a generated response does
        chosen_text, rejected_text = end_at_eos(chosen_text, tokenizer), end_at_eos(rejected_text, tokenizer)
    prompt_ids, chosen_ids, rejected_ids = encode(prompt_text), encode(chosen_text), encode(rejected_text)
    # Chat templates carry their own special tokens; plain text gets the model's `frame`
    # ([CLS] prompt [SEP] response [SEP] for BERT), from special_token_frame.
    before, between, after = frame
    budget = max_length - len(before) - len(between) - len(after)
    longest = max(len(chosen_ids), len(rejected_ids))
    fits = len(prompt_ids) + longest <= budget
    prompt_truncated = response_truncated = False
    if not fits and overlong == "truncate":
        keep_prompt = max(budget - longest, 0)
        prompt_truncated = keep_prompt < len(prompt_ids)
        prompt_ids = prompt_ids[len(prompt_ids) - keep_prompt:]
        if longest > budget:
            response_truncated = True
            chosen_ids, rejected_ids = chosen_ids[:budget], rejected_ids[:budget]

    return {
        "chosen_input_ids": before + prompt_ids + between + chosen_ids + after,
        "rejected_input_ids": before + prompt_ids + between + rejected_ids + after,
        "chosen_response_tokens": len(chosen_ids),
        "rejected_response_tokens": len(rejected_ids),
        "prompt_truncated": prompt_truncated,
        "response_truncated": response_truncated,
        "keep": fits or overlong == "truncate",
    }
