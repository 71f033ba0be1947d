"""Combining the rewards of an ensemble of reward models (or heads) into one reward per response."""

from __future__ import annotations

import torch

AGGREGATIONS = ("mean", "min", "uncertainty_weighted")


def aggregate(rewards: torch.Tensor, how: str = "mean", uncertainty_coef: float = 1.0) -> torch.Tensor:
    """[M, N] rewards of M members for N responses -> [N]: the `mean`, the worst case `min`, or
    `uncertainty_weighted` = mean - uncertainty_coef * std (population std over members).

    Coste et al. (2024), "Reward model ensembles help mitigate overoptimization", arXiv 2310.02743,
    Eqs. 2-4 (mean, WCO, UWO); Eisenstein et al. (2023), "Helping or herding?", arXiv 2312.09244.
    Raises ValueError for another `how`."""
    if how == "mean":
        return rewards.mean(dim=0)
    if how == "min":
        return rewards.min(dim=0).values
    if how == "uncertainty_weighted":
        return rewards.mean(dim=0) - uncertainty_coef * rewards.std(dim=0, correction=0)
    raise ValueError(f"ensemble aggregation {how!r}; choose one of {AGGREGATIONS}")
