"""The batch: what a collator (rmlab.data.collate) hands the model, and all that reads it relies on.

A batch holds B groups of K responses to one prompt each; a preference pair is a group of K = 2
(response 0 chosen, response 1 rejected). It comes in one of two layouts.

Padded (PairCollator, data.packing=none): one row per response, response-major, so that rows
[k*B, (k+1)*B) are response k of every group (pairs: [0, B) chosen, [B, 2B) rejected):

    input_ids        [K*B, L] int64    token ids, padded with the tokenizer's pad id on its padding side
    attention_mask   [K*B, L] int64    1 on real tokens, 0 on padding

Packed (SharedPromptCollator, data.packing=shared_prompt, causal decoders): one row per pair,
[shared prompt | chosen rest | rejected rest], the shared part computed once:

    input_ids        [B, L] int64      token ids, padded on the right
    segments         [B, L] int64      PAD (-1), PROMPT (0), CHOSEN (1), REJECTED (2) per position
    position_ids     [B, L] int64      the rejected part restarts where the chosen part started

Either layout may also carry, one value per group unless said otherwise:

    index            [B] int64         the group's row in its split (eval rewards are gathered by it)
    label_margin     [B] float32       the data's margin (data.columns.margin): how much better the
                                       chosen response is; the loss subtracts it from the reward margin
    weight           [B] float32       per-group loss weight (data.balance.method=reweight)
    response_tokens  [K*B] int64       tokens of each response (rows as in the padded layout), for
                                       the length-aware losses

The model's rewards come back in the padded layout's row order: [K*B], chosen rewards then rejected.
"""

from __future__ import annotations

from typing import TypedDict

import torch

RESPONSES = 2  # K: responses per group; a preference pair
PAD, PROMPT, CHOSEN, REJECTED = -1, 0, 1, 2  # `segments` values of the packed layout


class Batch(TypedDict, total=False):
    """The keys of the module docstring; `input_ids` always, then one layout's keys, then the optional ones."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    segments: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    label_margin: torch.Tensor
    weight: torch.Tensor
    response_tokens: torch.Tensor


def is_packed(batch: Batch) -> bool:
    """True for the packed layout (one row per pair), False for the padded one (one row per response)."""
    return "segments" in batch


def group_count(batch: Batch) -> int:
    """B: the groups (pairs) in the batch."""
    rows = len(batch["input_ids"])
    return rows if is_packed(batch) else rows // RESPONSES


def real_tokens(batch: Batch) -> torch.Tensor:
    """[rows, L] bool: the positions that hold a token rather than padding, in either layout."""
    return batch["segments"] != PAD if is_packed(batch) else batch["attention_mask"].bool()
