"""Batches of response sets: one prompt and K >= 2 responses (a pair is the set K = 2).

A set feature is {"input_ids": [K token lists, each prompt + response], "scores": [K floats], ...};
K may differ between the sets of a batch (Kmax: the largest K in it).

SetCollator (any backbone): the batch's N = sum of K responses become N padded rows, and
`set_rows` [B, Kmax] says which row holds response k of set b (-1: the set has fewer responses).
PackedSetCollator (causal decoders): each set becomes ONE row [prompt | r1 | ... | rK], so the
prompt is computed once per set; `segments` marks the prompt (0) and response k (k + 1), and the
positions of every response restart where the first one started. `packed_attention` in
rmlab.data.collate already keeps each response to the prompt and itself for any number of them.
For K = 2 both equal the pair collators' rows (tests/test_set_collate.py).
"""

from __future__ import annotations

from typing import Any

import torch

from rmlab.data.collate import PairCollator, pack_set, packed_batch


def _set_extras(features: list[dict[str, Any]], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """scores [B, Kmax] float32 (0 where absent), response_mask [B, Kmax] bool; if the features have them,
    index [B], response_tokens [B, Kmax] int64 (0 where absent) and weight [B] float32 (balance_weight)."""
    k_max = max(len(f["input_ids"]) for f in features)
    scores = torch.zeros(len(features), k_max)
    mask = torch.zeros(len(features), k_max, dtype=torch.bool)
    tokens = torch.zeros(len(features), k_max, dtype=torch.long)
    for b, feature in enumerate(features):
        k = len(feature["input_ids"])
        scores[b, :k] = torch.tensor([float(s) for s in feature["scores"]])
        mask[b, :k] = True
        if "response_tokens" in feature:
            tokens[b, :k] = torch.tensor(feature["response_tokens"])
    batch["scores"], batch["response_mask"] = scores, mask
    if "response_tokens" in features[0]:
        batch["response_tokens"] = tokens
    if "index" in features[0]:
        batch["index"] = torch.tensor([int(f["index"]) for f in features])
    if "balance_weight" in features[0]:  # data.balance.method=reweight
        batch["weight"] = torch.tensor([float(f["balance_weight"]) for f in features])
    return batch


class SetCollator:
    """Every response of the batch as its own padded row: input_ids and attention_mask [N, L],
    set_rows [B, Kmax] (row of response k of set b, -1 where set b has fewer than k + 1)."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        self.rows = PairCollator(pad_token_id, padding_side)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [s for f in features for s in f["input_ids"]]
        batch = self.rows.pad(sequences)
        k_max = max(len(f["input_ids"]) for f in features)
        set_rows = torch.full((len(features), k_max), -1, dtype=torch.long)
        start = 0
        for b, feature in enumerate(features):
            k = len(feature["input_ids"])
            set_rows[b, :k] = torch.arange(start, start + k)
            start += k
        batch["set_rows"] = set_rows
        return _set_extras(features, batch)


class PackedSetCollator:
    """[B, L] rows of packed sets (pack_set): input_ids, segments (PAD -1, prompt 0, response k:
    k + 1), position_ids; with scores and response_mask [B, Kmax]."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return _set_extras(features, packed_batch([pack_set(f["input_ids"]) for f in features], self.pad_token_id))


def to_sets(rewards: torch.Tensor, set_rows: torch.Tensor) -> torch.Tensor:
    """Rewards [N, ...] of SetCollator rows -> [B, Kmax, ...]; 0 where set_rows is -1."""
    gathered = rewards[set_rows.clamp(min=0)]
    absent = (set_rows < 0).view(*set_rows.shape, *([1] * (rewards.dim() - 1)))
    return gathered.masked_fill(absent, 0)
