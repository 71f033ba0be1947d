"""Pairwise reward-model losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BradleyTerryLoss(nn.Module):
    """Bradley-Terry pairwise loss, -log sigmoid(r_chosen - r_rejected - margin).

    Bradley & Terry (1952); as used for RLHF reward models by Ouyang et al. (2022), with the
    per-pair margin of Touvron et al. (Llama 2, 2023) and the reward-centering auxiliary term
    `coef * mean((r_c + r_r)^2)` of Eisenstein et al. (2023). Label smoothing treats each label as
    correct with probability 1 - label_smoothing (conservative/"cDPO"-style smoothing).
    `logsigmoid` keeps the loss finite for any margin (never log(sigmoid(x) + eps)).
    """

    def __init__(self, center_rewards_coef: float = 0.0, label_smoothing: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.center_rewards_coef = center_rewards_coef
        self.label_smoothing = label_smoothing

    def forward(
        self,
        reward_chosen: torch.Tensor,
        reward_rejected: torch.Tensor,
        margin: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = reward_chosen - reward_rejected
        if margin is not None:
            logits = logits - margin
        eps = self.label_smoothing
        loss = -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        loss = loss.mean()
        if self.center_rewards_coef:
            loss = loss + self.center_rewards_coef * ((reward_chosen + reward_rejected) ** 2).mean()
        return loss
