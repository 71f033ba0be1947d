"""Reward-model losses: pairwise (chosen vs rejected), and over a set of K responses to one prompt."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def batch_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of x, y ([N] each) as a 0-d tensor, differentiable; 0 when either is constant
    (or N < 3), so a batch of equal-length responses adds no penalty."""
    if x.numel() < 3:
        return x.sum() * 0.0
    x, y = x.float() - x.float().mean(), y.float() - y.float().mean()
    scale = x.norm() * y.norm()
    return (x * y).sum() / scale if float(scale) > 1e-12 else x.sum() * 0.0


class BradleyTerryLoss(nn.Module):
    """Bradley-Terry pairwise loss over B pairs, with d = r_chosen - r_rejected - label_margin:

        loss = mean_b w_b * [-(1 - eps) log sigmoid(d_b) - eps log sigmoid(-d_b)]
               + center_rewards_coef * mean_b (r_chosen,b + r_rejected,b)^2
               + length_penalty_coef * corr(r, response tokens)^2      (over the batch's 2B responses)

    Bradley & Terry (1952), Biometrika 39; the reward-model loss of Ouyang et al. (2022, InstructGPT,
    arXiv 2203.02155, Eq. 1); the per-pair label margin of Touvron et al. (2023, Llama 2, arXiv
    2307.09288, Eq. 2); the reward-centering auxiliary term of Eisenstein et al. (2023, "Helping or
    herding?", arXiv 2312.09244), as TRL's `center_rewards_coefficient`. Label smoothing eps treats each
    label as correct with probability 1 - eps (conservative/"cDPO"-style). `logsigmoid` keeps the loss
    finite for any margin (never log(sigmoid(x) + eps)).

    Debiasing (README "Debiasing"): `weight` w weighs each pair (data.balance.method=reweight; weights of
    mean 1 over the data set, so the loss keeps its scale); the length term pushes the reward to carry
    no linear trace of length within a batch (the correlation penalty of Shen et al. 2023, "Loose lips
    sink ships", arXiv 2310.05199, and of Chen et al. 2024, ODIN, arXiv 2402.07319).
    """

    num_heads = 1  # reward-head outputs this loss reads

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
        label_margin: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        response_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scalar loss. reward_chosen, reward_rejected, label_margin (the data's), weight: [B];
        response_tokens: [2B] (chosen rows, then rejected)."""
        logits = reward_chosen - reward_rejected
        if label_margin is not None:
            logits = logits - label_margin
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
    Hacking in RLHF", arXiv 2402.07319): head 0 is meant for quality, head 1 for length.

        loss = BT(r_q + r_l) + length_coef * (|corr(r_q, L)| - corr(r_l, L)) + orthogonal_coef * |cos(w_q, w_l)|

    with BT the BradleyTerryLoss above on the summed heads, L the response lengths in tokens, w_q, w_l
    the two rows of the head's weight. The length term pushes length into head 1 (rising with length,
    so the sum can still fit a length preference of the labels) and out of head 0; the orthogonality
    term keeps the two heads' weights apart.
    Rewards used for evaluation and scoring are the quality head's (RewardModel.forward).

    Takes [B, 2] rewards while training; [B] rewards (the quality head alone, as evaluation gives
    them) get the plain Bradley-Terry loss.
    """

    num_heads = 2  # quality, length

    def __init__(self, length_coef: float = 1.0, orthogonal_coef: float = 1.0, center_rewards_coef: float = 0.0,
                 label_smoothing: float = 0.0, length_penalty_coef: float = 0.0):
        super().__init__(center_rewards_coef, label_smoothing, length_penalty_coef)
        self.length_coef, self.orthogonal_coef = length_coef, orthogonal_coef

    def forward(self, reward_chosen, reward_rejected, label_margin=None, weight=None, response_tokens=None, head_weight=None):
        """Scalar loss. Rewards [B, 2] (quality, length heads) or [B]; head_weight [2, hidden]; the rest as BradleyTerryLoss."""
        if reward_chosen.dim() == 1:
            return super().forward(reward_chosen, reward_rejected, label_margin, weight)
        loss = super().forward(reward_chosen.sum(-1), reward_rejected.sum(-1), label_margin, weight, response_tokens)
        return loss + self.disentangle(torch.cat([reward_chosen, reward_rejected]), response_tokens, head_weight)

    def disentangle(self, outputs: torch.Tensor, response_tokens: torch.Tensor | None = None,
                    head_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The ODIN terms beyond Bradley-Terry, a 0-d tensor: outputs [N, 2] (quality, length) of N responses,
        response_tokens [N], head_weight [2, hidden]; a term whose input is None is left out."""
        loss = outputs.sum() * 0.0
        if response_tokens is not None and self.length_coef:
            quality, length = outputs.unbind(-1)
            loss = loss + self.length_coef * (batch_correlation(quality, response_tokens).abs()
                                              - batch_correlation(length, response_tokens))
        if head_weight is not None and self.orthogonal_coef:
            loss = loss + self.orthogonal_coef * F.cosine_similarity(head_weight[0], head_weight[1], dim=0).abs()
        return loss


# -- Losses over a set of K responses to one prompt ---------------------------------------------------
# rewards, scores: [B, K]; mask: [B, K] bool, True where a response exists (sets of fewer than K
# responses are padded). Higher scores are better; equal scores are ties. A pair is the set K = 2.
# weight: [B] per-set weights (ensemble=heads with bootstrap: a head's Poisson(1) draws), multiplying
# every term the set contributes before the mean, as BradleyTerryLoss weighs a pair.

def ordered_pairs(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, K, K] booleans: `better[b, i, j]` where response i of set b outscores response j, and
    `tied[b, i, j]` (i < j) where they score the same; padding takes part in neither."""
    both = mask[:, :, None] & mask[:, None, :]
    better = both & (scores[:, :, None] > scores[:, None, :])
    upper = torch.ones(scores.shape[1], scores.shape[1], dtype=torch.bool, device=scores.device).triu(1)
    tied = both & (scores[:, :, None] == scores[:, None, :]) & upper
    return better, tied


def set_penalties(pair_loss: BradleyTerryLoss, rewards: torch.Tensor, mask: torch.Tensor,
                  response_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """model.loss's centering and length terms on a set batch, as BradleyTerryLoss adds them to a pair batch:

        center_rewards_coef * mean_b (sum_k r_b,k)^2 + length_penalty_coef * corr(r, response tokens)^2

    the correlation over the batch's real responses (mask). rewards [B, K]; mask [B, K] bool;
    response_tokens [B, K] or None (no length term) -> 0-d tensor. For K = 2 these are the pair terms
    (Eisenstein et al. 2023, arXiv 2312.09244; Shen et al. 2023, arXiv 2310.05199)."""
    loss = rewards.sum() * 0.0
    if pair_loss.center_rewards_coef:
        loss = loss + pair_loss.center_rewards_coef * ((rewards * mask).sum(dim=1) ** 2).mean()
    if pair_loss.length_penalty_coef and response_tokens is not None:
        loss = loss + pair_loss.length_penalty_coef * batch_correlation(rewards[mask], response_tokens[mask]) ** 2
    return loss


def set_pair_counts(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] ordered pairs, [B] tied pairs) that each set gives: K(K-1)/2 in all for K responses."""
    better, tied = ordered_pairs(scores, mask)
    return better.sum(dim=(1, 2)), tied.sum(dim=(1, 2))


class AllPairsBradleyTerryLoss(nn.Module):
    """Bradley-Terry over every ordered pair of a set: mean over the batch's pairs (i better than j)
    of -log sigmoid(r_i - r_j - margin_scale * (s_i - s_j)); tied pairs teach nothing here (counted by
    set_pair_counts). As TRL or OpenRLHF train on the K(K-1)/2 pairs of an expanded set, but with
    every response scored once. K = 2 with margin_scale 0 is BradleyTerryLoss.

    Bradley & Terry (1952), "Rank analysis of incomplete block designs"; the score-difference margin as
    in Llama 2 (Touvron et al. 2023, arXiv 2307.09288), Eq. 2.
    """

    def __init__(self, margin_scale: float = 0.0):
        super().__init__()
        self.margin_scale = margin_scale

    def forward(self, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """rewards, scores: [B, K]; mask: [B, K] bool; weight: [B] or None -> scalar loss."""
        better, _ = ordered_pairs(scores, mask)
        logits = rewards[:, :, None] - rewards[:, None, :] - self.margin_scale * (scores[:, :, None] - scores[:, None, :])
        nll = -F.logsigmoid(logits)
        return (nll if weight is None else nll * weight[:, None, None])[better].mean()


class PlackettLuceLoss(nn.Module):
    """Negative log-likelihood of the set's ranking under Plackett-Luce (ListMLE): for each response,
    -(r_i - logsumexp of r_j over the responses not ranked above it), summed over the set and averaged
    over the batch's sets. Ties use Breslow's rule (tied responses share one another in their
    denominators), so tied responses are treated alike. K = 2 without a tie is BradleyTerryLoss.

    Plackett (1975), "The analysis of permutations"; Luce (1959); as a ranking loss: ListMLE, Xia et al.
    (2008), "Listwise approach to learning to rank", ICML, Eq. 9; ties: Breslow (1974), Biometrics 30.
    """

    def forward(self, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """rewards, scores: [B, K]; mask: [B, K] bool; weight: [B] or None -> scalar loss."""
        # [B, K(i), K(j)]: j is still in the running when i is chosen (not ranked above i).
        remaining = mask[:, None, :] & (scores[:, None, :] <= scores[:, :, None])
        # An absent i (a set smaller than Kmax) may have no j left (all real scores above its 0): itself keeps
        # its logsumexp finite, its term 0 (an empty row gave inf * 0 = NaN).
        remaining |= torch.eye(mask.shape[1], dtype=torch.bool, device=mask.device)
        logits = rewards[:, None, :].expand_as(remaining).masked_fill(~remaining, float("-inf"))
        terms = rewards - torch.logsumexp(logits, dim=2)  # [B, K]
        per_set = -(terms * mask).sum(dim=1)  # [B]
        return (per_set if weight is None else per_set * weight).mean()


class DavidsonTiesLoss(nn.Module):
    """Bradley-Terry with ties (Davidson 1970, "On extending the Bradley-Terry model to accommodate
    ties", JASA 65, Eq. 2.1): with d = r_i - r_j and tie strength nu,
    P(i beats j) = e^{d/2} / (e^{d/2} + e^{-d/2} + nu),  P(tie) = nu / (e^{d/2} + e^{-d/2} + nu).
    The loss is the mean negative log-likelihood over the batch's ordered and tied pairs, so tied
    responses teach "equal" instead of being dropped."""

    def __init__(self, tie_strength: float = 1.0):
        super().__init__()
        if tie_strength <= 0:
            raise ValueError(f"tie_strength must be > 0, got {tie_strength}")
        self.log_nu = math.log(tie_strength)

    def forward(self, rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                weight: torch.Tensor | None = None) -> torch.Tensor:
        """rewards, scores: [B, K]; mask: [B, K] bool; weight: [B] or None -> scalar loss."""
        better, tied = ordered_pairs(scores, mask)
        half = (rewards[:, :, None] - rewards[:, None, :]) / 2
        log_norm = torch.logsumexp(torch.stack([half, -half, torch.full_like(half, self.log_nu)]), dim=0)
        weights = torch.ones_like(half) if weight is None else weight[:, None, None].expand_as(half)
        nll = torch.cat([(log_norm - half)[better] * weights[better], (log_norm - self.log_nu)[tied] * weights[tied]])
        return nll.mean()
