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

Response sets (data=alpacaeval_sets, synthetic_sets, ...: K >= 2 responses with gold scores, K may
differ between the sets of a batch; Kmax is the largest) use the same two layouts, built by
rmlab.data.set_collate, and carry instead of the pair keys above:

    scores           [B, Kmax] float32 each response's gold score (higher is better, equal: a tie; 0 where absent)
    response_mask    [B, Kmax] bool    True where set b has a response k
    set_rows         [B, Kmax] int64   padded layout only: the row of response k of set b (-1 where absent);
                                       rows are set-major (set 0's responses, then set 1's, ...)
    response_tokens  [B, Kmax] int64   tokens of each response (0 where absent), for the length-aware losses

`index` and `weight` are as for pairs, one per set.

In the packed layout `segments` marks the prompt 0 and response k with k + 1. The model's rewards
for a set batch are [B, Kmax] (RewardModel.set_rewards).
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
    scores: torch.Tensor
    response_mask: torch.Tensor
    set_rows: torch.Tensor


def is_packed(batch: Batch) -> bool:
    """True for the packed layout (one row per pair), False for the padded one (one row per response)."""
    return "segments" in batch


def is_set_batch(batch: Batch) -> bool:
    """True for a batch of response sets (scores per response), False for one of pairs."""
    return "scores" in batch


def group_count(batch: Batch) -> int:
    """B: the groups (pairs, or response sets) in the batch."""
    if is_set_batch(batch):
        return len(batch["scores"])
    rows = len(batch["input_ids"])
    return rows if is_packed(batch) else rows // RESPONSES


def real_tokens(batch: Batch) -> torch.Tensor:
    """[rows, L] bool: the positions that hold a token rather than padding, in either layout."""
    return batch["segments"] != PAD if is_packed(batch) else batch["attention_mask"].bool()
