"""Pooling: one vector per sequence from the backbone's hidden states.

All poolings read positions from the attention mask, never from token ids, so they are correct
under left padding, right padding, and when the pad token is also the eos token (SmolLM2, Llama).
"""

from __future__ import annotations

import torch
from torch import nn

from rmlab.errors import ConfigError


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, L] attention mask -> [N] int64: the position of each row's last real token, for any padding side."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * positions).argmax(dim=1)


def first_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[N, L] attention mask -> [N] int64: the position of each row's first real token (0 under right padding)."""
    return attention_mask.bool().int().argmax(dim=1)


class LastTokenPooling(nn.Module):
    """Hidden state of the last real token: what a causal decoder has read the whole sequence at.

    The naive `hidden[:, -1]` scores a pad token under right padding; this reads the mask instead.
    """

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, H], attention_mask [N, L] (1 = real token) -> [N, H]."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last_token_index(attention_mask)]


class MeanPooling(nn.Module):
    """Mean of the hidden states of the real tokens (padding excluded)."""

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, H], attention_mask [N, L] (1 = real token) -> [N, H]."""
        mask = attention_mask.unsqueeze(-1).bool()
        # where(), not hidden * mask: a pad row can hold NaN (fully masked attention) and NaN * 0 = NaN.
        total = torch.where(mask, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(dim=1)
        return total / mask.sum(dim=1).clamp(min=1).to(hidden.dtype)


class ClsPooling(nn.Module):
    """Hidden state of the first real token ([CLS] for BERT-style encoders).

    A poor choice for causal decoders: their first token has seen nothing but itself, so every
    sequence gets (nearly) the same reward. Use `last` or `mean` there.
    """

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, H], attention_mask [N, L] (1 = real token) -> [N, H]."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, first_token_index(attention_mask)]


class PoolerPooling(nn.Module):
    """tanh(dense(hidden state of the first real token)): the head BERT's pooler computes.

    With it the reward is exactly what transformers' BertForSequenceClassification computes (pooler,
    then its classifier; rmlab's head has no bias, exported as 0), so rmlab.export writes an encoder
    that plain transformers loads without remote code. The dense layer starts from the backbone's
    pretrained pooler, which RewardModel hands over through `adopt`; backbones without one are refused.
    """

    def __init__(self):
        super().__init__()
        self.dense: nn.Linear | None = None

    def adopt(self, pooler: nn.Module | None, backbone_name: str) -> None:
        """Take over the backbone's pooler dense layer (BertPooler.dense: [hidden, hidden])."""
        if not isinstance(getattr(pooler, "dense", None), nn.Linear):
            raise ConfigError(f"pooling=pooler needs a backbone with a BERT-style pooler (a dense layer on [CLS]); "
                              f"{backbone_name} has none. Use pooling=cls, mean or last")
        self.dense = pooler.dense.train()  # from_pretrained left it in eval mode

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """hidden [N, L, H], attention_mask [N, L] (1 = real token) -> [N, H]."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return torch.tanh(self.dense(hidden[rows, first_token_index(attention_mask)]))


# The `_target_` of each pooling config (conf/pooling/*.yaml) and its short name (export, preflight).
POOLINGS = {
    "rmlab.model.pooling.LastTokenPooling": "last",
    "rmlab.model.pooling.MeanPooling": "mean",
    "rmlab.model.pooling.ClsPooling": "cls",
    "rmlab.model.pooling.PoolerPooling": "pooler",
}
