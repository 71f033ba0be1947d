"""Batches of pairs, in the layouts the batch contract (rmlab.data.batch) defines key by key.

PairCollator: dynamic padding; a batch of B pairs becomes one [2B, L] tensor (chosen rows, then
rejected rows). SharedPromptCollator (causal decoders only): each pair becomes ONE row
[prompt | chosen | rejected], so the prompt is computed once; `segments` says which part each
position belongs to, and RewardModel builds the attention mask that keeps the two responses
apart (each sees the prompt and itself), with position ids that restart the rejected response
where the chosen one started. Rewards equal the unpacked ones (tests/test_packing.py).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rmlab.data.batch import PAD, PROMPT, Batch

PACKING = ("none", "shared_prompt")


def _pair_extras(features: list[dict[str, Any]], batch: Batch) -> Batch:
    """The optional keys of the batch contract (rmlab.data.batch) that the split's rows carry."""
    if "index" in features[0]:
        batch["index"] = torch.tensor([int(f["index"]) for f in features])
    if "label_margin" in features[0]:
        batch["label_margin"] = torch.tensor([float(f["label_margin"]) for f in features])
    if "balance_weight" in features[0]:  # data.balance.method=reweight
        batch["weight"] = torch.tensor([float(f["balance_weight"]) for f in features])
    if "chosen_response_tokens" in features[0]:  # [2B], as the rows: for the length-aware losses
        batch["response_tokens"] = torch.tensor([int(f[f"{side}_response_tokens"]) for side in ("chosen", "rejected")
                                                 for f in features])
    return batch


class PairCollator:
    """Pads each batch to its own longest sequence, on the tokenizer's padding side."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def pad(self, sequences: list[list[int]], length: int | None = None) -> dict[str, torch.Tensor]:
        """[N, L] input_ids and attention_mask; L is the longest sequence, or `length` (static padding)."""
        length = length or max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(length - len(seq), length) if self.padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        """The padded layout of rmlab.data.batch: [2B, L], chosen rows then rejected rows."""
        batch = self.pad([f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features])
        return _pair_extras(features, batch)


def pack_set(sequences: list[list[int]]) -> tuple[list[int], list[int], list[int]]:
    """One row for a set of K >= 2 token sequences that share a prompt.

    Returns (token ids, segments, position ids), each of length p + sum(len(s) - p): the part all
    sequences share at their start (p tokens, capped so every response keeps one token of its own,
    where its reward is read), then each sequence's rest. Segments: 0 for the shared part, k + 1 for
    the rest of sequence k. Positions continue the shared part in every response, as if unpacked.
    Raises ValueError for fewer than 2 sequences or an empty one.
    """
    if len(sequences) < 2 or not all(sequences):
        raise ValueError(f"a set needs at least 2 non-empty sequences, got lengths {[len(s) for s in sequences]}")
    shared = min(len(os.path.commonprefix(sequences)), min(len(s) for s in sequences) - 1)
    ids, segments, positions = list(sequences[0][:shared]), [PROMPT] * shared, list(range(shared))
    for k, sequence in enumerate(sequences):
        ids += sequence[shared:]
        segments += [k + 1] * (len(sequence) - shared)
        positions += range(shared, len(sequence))
    return ids, segments, positions


def pack_pair(chosen: list[int], rejected: list[int]) -> tuple[list[int], list[int], list[int]]:
    """One row for a pair: (token ids, segments, position ids) of [shared | chosen rest | rejected rest],
    the set of two (pack_set): segments PROMPT, CHOSEN, REJECTED."""
    return pack_set([chosen, rejected])


class SharedPromptCollator:
    """[B, L] rows of packed pairs: input_ids, segments (PAD/PROMPT/CHOSEN/REJECTED), position_ids."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> Batch:
        """The packed layout of rmlab.data.batch: [B, L], one row per pair."""
        rows = [pack_pair(f["chosen_input_ids"], f["rejected_input_ids"]) for f in features]
        return _pair_extras(features, packed_batch(rows, self.pad_token_id))


def packed_batch(rows: list[tuple[list[int], list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, segments, position_ids [B, L] of packed rows ((ids, segments, positions) each, as
    pack_pair or rmlab.data.set_collate.pack_set give them), right-padded to the longest (PAD segments)."""
    length = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    segments = torch.full((len(rows), length), PAD, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    for row, (ids, seg, pos) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        segments[row, :len(ids)] = torch.tensor(seg)
        position_ids[row, :len(ids)] = torch.tensor(pos)
    return {"input_ids": input_ids, "segments": segments, "position_ids": position_ids}


def make_collator(packing: str, pad_token_id: int, padding_side: str):
    if packing not in PACKING:
        raise ValueError(f"data.packing={packing!r}; choose one of {PACKING}")
    return SharedPromptCollator(pad_token_id) if packing == "shared_prompt" else PairCollator(pad_token_id, padding_side)


def packed_attention(segments: torch.Tensor) -> torch.Tensor:
    """[B, 1, L, L] boolean mask (True: may attend) for SharedPromptCollator rows: causal, and a
    response sees the shared part and itself, never the other response. A pad position sees
    itself only (a query row with nothing to attend to would make attention NaN)."""
    length = segments.shape[1]
    order = torch.arange(length, device=segments.device)
    causal = order[None, :] <= order[:, None]                      # [L(query), L(key)]
    query, key = segments[:, :, None], segments[:, None, :]
    visible = (key == PROMPT) | (key == query)
    mask = causal & visible & (key != PAD) & (query != PAD)
    mask |= torch.eye(length, dtype=torch.bool, device=segments.device)
    return mask[:, None]


def sequence_masks(segments: torch.Tensor) -> torch.Tensor:
    """[2B, L]: which positions of each packed row make up the chosen sequence (rows [0, B)) and
    the rejected one (rows [B, 2B)); the mask a pooling reads in place of an attention mask."""
    return response_masks(segments, 2).transpose(0, 1).flatten(0, 1)


def response_masks(segments: torch.Tensor, k_max: int) -> torch.Tensor:
    """[B, Kmax, L] long: the positions of packed row b that make up response k's whole sequence
    (shared prompt + its own tokens); what a pooling reads in place of an attention mask. A response
    the set does not have gets the prompt only (its reward is masked out by response_mask)."""
    shared = segments == PROMPT
    return torch.stack([shared | (segments == k + 1) for k in range(k_max)], dim=1).long()
