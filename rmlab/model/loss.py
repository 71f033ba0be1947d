"""Pairwise reward-model losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def batch_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two 1-D tensors, differentiable; 0 when either is constant (or < 3 points),
    so a batch of equal-length responses adds no penalty."""
    if x.numel() < 3:
        return x.sum() * 0.0
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    scale = x.norm() * y.norm()
    return (x * y).sum() / scale if float(scale) > 1e-12 else x.sum() * 0.0


class BradleyTerryLoss(nn.Module):
    """Bradley-Terry pairwise loss, -log sigmoid(r_chosen - r_rejected - margin).

    Bradley & Terry (1952); as used for RLHF reward models by Ouyang et al. (2022), with the
    per-pair margin of Touvron et al. (Llama 2, 2023) and the reward-centering auxiliary term
    `coef * mean((r_c + r_r)^2)` of Eisenstein et al. (2023). Label smoothing treats each label as
    correct with probability 1 - label_smoothing (conservative/"cDPO"-style smoothing).
    `logsigmoid` keeps the loss finite for any margin (never log(sigmoid(x) + eps)).

    Debiasing (README "Debiasing"): `weight` weighs each pair (data.balance.method=reweight; weights of
    mean 1 over the data set, so the loss keeps its scale), and `length_penalty_coef` adds
    coef * corr(reward, response tokens)^2 over the batch's responses, which pushes the reward to carry
    no linear trace of length within a batch (the correlation penalty of Shen et al. 2023, "Loose lips
    sink ships", and Chen et al. 2024, ODIN).
    """

    heads = 1  # reward-head outputs this loss reads

    def __init__(self, center_rewards_coef: float = 0.0, label_smoothing: float = 0.0, length_penalty_coef: float = 0.0):
        super().__init__()
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.center_rewards_coef = center_rewards_coef
        self.label_smoothing = label_smoothing
        self.length_penalty_coef = length_penalty_coef

    def forward(
        self,
        reward_chosen: torch.Tensor,
        reward_rejected: torch.Tensor,
        margin: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        response_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = reward_chosen - reward_rejected
        if margin is not None:
            logits = logits - margin
        eps = self.label_smoothing
        loss = -(1.0 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
        loss = (loss * weight).mean() if weight is not None else loss.mean()
        if self.center_rewards_coef:
            loss = loss + self.center_rewards_coef * ((reward_chosen + reward_rejected) ** 2).mean()
        if self.length_penalty_coef and response_tokens is not None:
            rewards = torch.cat([reward_chosen, reward_rejected])
            loss = loss + self.length_penalty_coef * batch_correlation(rewards, response_tokens) ** 2
        return loss


class OdinLoss(BradleyTerryLoss):
    """Disentangled two-head reward (ODIN, Chen et al. 2024, "ODIN: Disentangled Reward Mitigates
    Hacking in RLHF"): head 0 is meant for quality, head 1 for length. Bradley-Terry trains their sum;
    `length_coef` * (|corr(quality, length)| - corr(length head, length)) pushes length into head 1 (rising
    with length, so the sum can still fit a length preference of the labels) and out of head 0, and
    `orthogonal_coef` * |cos(w_quality, w_length)| keeps the two heads' weights apart.
    Rewards used for evaluation and scoring are the quality head's (RewardModel.forward).

    Takes [B, 2] rewards while training; [B] rewards (the quality head alone, as evaluation gives
    them) get the plain Bradley-Terry loss.
    """

    heads = 2

    def __init__(self, length_coef: float = 1.0, orthogonal_coef: float = 1.0, center_rewards_coef: float = 0.0,
                 label_smoothing: float = 0.0, length_penalty_coef: float = 0.0):
        super().__init__(center_rewards_coef, label_smoothing, length_penalty_coef)
        self.length_coef, self.orthogonal_coef = length_coef, orthogonal_coef

    def forward(self, reward_chosen, reward_rejected, margin=None, weight=None, response_tokens=None, head_weight=None):
        if reward_chosen.dim() == 1:
            return super().forward(reward_chosen, reward_rejected, margin, weight)
        loss = super().forward(reward_chosen.sum(-1), reward_rejected.sum(-1), margin, weight, response_tokens)
        if response_tokens is not None and self.length_coef:
            quality, length = torch.cat([reward_chosen, reward_rejected]).unbind(-1)
            loss = loss + self.length_coef * (batch_correlation(quality, response_tokens).abs()
                                              - batch_correlation(length, response_tokens))
        if head_weight is not None and self.orthogonal_coef:
            loss = loss + self.orthogonal_coef * F.cosine_similarity(head_weight[0], head_weight[1], dim=0).abs()
        return loss
