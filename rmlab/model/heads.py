"""A reward ensemble inside one model: k linear reward heads on one shared backbone (conf/ensemble/heads.yaml).

Each head starts from its own random initialisation and, with `bootstrap`, learns from its own
bootstrap of the training data: every training example (a pair, or a response set) weighs
Poisson(1) times in head h's loss, the online bootstrap of Oza & Russell (2001, "Online bagging and
boosting", AISTATS), which draws each example as often as resampling n of n with replacement does
(in the limit). Heads on a shared network, each trained on its own bootstrap mask: Osband et al.
(2016), "Deep exploration via bootstrapped DQN", arXiv 1602.04621, Sec. 3 and 4. The heads' rewards
are combined as in rmlab.model.ensemble (mean, min, uncertainty-weighted; Coste et al. 2024, arXiv
2310.02743), which is what training metrics, validation, evaluation and scoring read.

The weights depend only on (seed, head, example's row in its split), never on the batch or the rank
that draws them, so a resumed run, a DDP run and a single-process run train every head on the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from rmlab.errors import ConfigError
from rmlab.model.ensemble import AGGREGATIONS, aggregate


def bootstrap_weights(index: torch.Tensor, heads: int, seed: int) -> torch.Tensor:
    """[B] example rows (each row's `index` in its split) -> [B, heads] float32 Poisson(1) weights;
    weight [b, h] is a draw from numpy's generator seeded by (seed, h, index[b]) alone."""
    rows = index.tolist()
    draws = [[np.random.default_rng([seed, h, row]).poisson(1.0) for h in range(heads)] for row in rows]
    return torch.tensor(draws, dtype=torch.float32, device=index.device).view(len(rows), heads)


class HeadEnsemble:
    """How the k heads of a RewardModel train and combine (python -m rmlab.train ensemble=heads).

    heads: k >= 2 reward heads on the shared backbone. bootstrap: train head h on Poisson(1) weights of
    the examples (bootstrap_weights); false: every head sees all the data (the heads differ only by
    their initialisation and what that leads to). aggregation: the reward every metric, evaluation,
    scoring and export reads, one of rmlab.model.ensemble.AGGREGATIONS; uncertainty_coef: the lambda of
    uncertainty_weighted. seed: the bootstrap's seed. Raises ConfigError for k < 2 or another aggregation.
    """

    def __init__(self, heads: int = 3, bootstrap: bool = True, aggregation: str = "mean",
                 uncertainty_coef: float = 1.0, seed: int = 0):
        if int(heads) < 2:
            raise ConfigError(f"model.ensemble.heads={heads}: an ensemble needs 2 or more heads "
                              "(for one reward head leave ensemble= unset)")
        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"model.ensemble.aggregation={aggregation!r}; choose one of {AGGREGATIONS}")
        self.heads, self.bootstrap, self.aggregation = int(heads), bool(bootstrap), aggregation
        self.uncertainty_coef, self.seed = float(uncertainty_coef), int(seed)

    def reward(self, outputs: torch.Tensor) -> torch.Tensor:
        """[N, heads] head outputs -> [N] rewards, combined by `aggregation`."""
        return aggregate(outputs.T, self.aggregation, self.uncertainty_coef)

    def weights(self, index: torch.Tensor | None) -> torch.Tensor | None:
        """[B, heads] bootstrap weights of a training batch's examples ([B] rows), or None without bootstrap.
        Raises ConfigError when the batch has no row ids (a DataModule that gives none)."""
        if not self.bootstrap:
            return None
        if index is None:
            raise ConfigError("model.ensemble.bootstrap=true draws each example's weights from its row id, and this "
                              "data module's batches carry none (no `index`); set model.ensemble.bootstrap=false")
        return bootstrap_weights(index, self.heads, self.seed)
