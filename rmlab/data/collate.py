"""Dynamic padding: a batch of B pairs becomes one [2B, L] tensor (chosen rows, then rejected rows)."""

from __future__ import annotations

from typing import Any

import torch


class PairCollator:
    """Pads each batch to its own longest sequence, on the tokenizer's padding side."""

    def __init__(self, pad_token_id: int, padding_side: str = "right"):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        length = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            span = slice(length - len(seq), length) if self.padding_side == "left" else slice(0, len(seq))
            input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.pad([f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features])
        if "index" in features[0]:
            batch["index"] = torch.tensor([int(f["index"]) for f in features])
        if "margin" in features[0]:
            batch["margin"] = torch.tensor([float(f["margin"]) for f in features])
        return batch
