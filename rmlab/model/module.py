"""The reward model as a LightningModule: backbone -> pooling -> Linear(hidden, 1) -> pairwise loss
(Linear(hidden, k) and k losses with ensemble=heads: rmlab.model.heads).

The module holds the network, the loss call and the Lightning hooks; the eval-reward store
(model/eval_store.py), the non-finite policy (model/nonfinite.py) and the optimizer and fused
clipping (model/optim.py) live in modules of their own. Batches follow rmlab.data.batch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from rmlab.data.batch import Batch, group_count, is_set_batch
from rmlab.data.collate import packed_attention, response_masks, sequence_masks
from rmlab.data.set_collate import to_sets
from rmlab.errors import ConfigError, NonFiniteError
from rmlab.hub import is_causal_decoder
from rmlab.model import optim
from rmlab.model.backbone import apply_lora, load_backbone
from rmlab.model.eval_store import EvalRewardStore, EvalSetStore, ScoredPairs, ScoredSets
from rmlab.model.heads import HeadEnsemble
from rmlab.model.loss import AllPairsBradleyTerryLoss, ordered_pairs, set_penalties
from rmlab.model.nonfinite import check_policy, nonfinite_problem

log = logging.getLogger(__name__)


def pair_correct(reward_margin: torch.Tensor) -> torch.Tensor:
    """[B] -> [B]: 1 where chosen outscores rejected (reward_margin = r_chosen - r_rejected > 0), 0.5 on
    a tie (a constant scorer gets exactly chance)."""
    return (reward_margin > 0).float() + 0.5 * (reward_margin == 0).float()


def pair_metrics(stage: str, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor, loss: torch.Tensor) -> dict[str, float]:
    """Accuracy, loss, mean reward margin and reward moments of one split, from every pair's rewards ([N] each)."""
    margin = reward_chosen - reward_rejected
    out = {f"{stage}/acc": pair_correct(margin).mean(), f"{stage}/loss": loss, f"{stage}/margin": margin.mean()}
    for side, rewards in (("chosen", reward_chosen), ("rejected", reward_rejected)):
        out[f"{stage}/reward_{side}_mean"] = rewards.mean()
        out[f"{stage}/reward_{side}_std"] = rewards.std(correction=0)
    return {key: float(value) for key, value in out.items()}


def set_pair_accuracy(rewards: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[] share of a set batch's ordered pairs (i scored above j; rewards, scores, mask [B, K]) whose
    rewards agree (r_i > r_j: 1, a tie: 0.5), as pair_correct counts a pair; NaN without ordered pairs."""
    better, _ = ordered_pairs(scores, mask)
    return pair_correct(rewards[:, :, None] - rewards[:, None, :])[better].mean()


def split_point(lengths: torch.Tensor, min_saving: float = 0.1) -> int | None:
    """Where to cut the rows ([N] lengths), sorted by length, into two forwards: the k that minimises
    k * (k-th length) + (n - k) * (longest length), if that saves at least `min_saving` of the
    positions one forward pads; else None (one forward)."""
    n = len(lengths)
    if n < 4:
        return None
    ordered = torch.sort(lengths).values.long()
    k = torch.arange(1, n, device=lengths.device)
    cost = k * ordered[k - 1] + (n - k) * ordered[-1]
    best = int(cost.argmin())
    return int(k[best]) if int(cost[best]) <= (1 - min_saving) * n * int(ordered[-1]) else None


class RewardModel(L.LightningModule):
    """Scores a sequence with one scalar; trained on (chosen, rejected) pairs.

    Chosen and rejected sequences of a batch go through the backbone in one forward pass
    (the collator stacks them: rows [0, B) chosen, [B, 2B) rejected).
    """

    def __init__(
        self,
        backbone: dict,
        pooling: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.01,
        disable_dropout: bool = True,
        lora: dict | None = None,
        on_nonfinite: str = "stop",
        split_by_length: bool = True,
        set_loss: nn.Module | None = None,
        ensemble: HeadEnsemble | None = None,
    ):
        super().__init__()
        check_policy(on_nonfinite)
        self.save_hyperparameters({"backbone": backbone, "warmup_ratio": warmup_ratio, "weight_decay": weight_decay})
        adopts_pooler = hasattr(pooling, "adopt")  # pooling=pooler: the backbone's pooler becomes the pooling's
        self.backbone = load_backbone(**backbone, keep_pooler=adopts_pooler)
        if adopts_pooler:
            pooling.adopt(getattr(self.backbone, "pooler", None), backbone["name_or_path"])
            self.backbone.pooler = None  # its weights now live (and train) in the pooling module
        self.backbone.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes
        # Models that build positions from arange (Llama, BERT) would shift left-padded rows.
        # (Read before a LoRA wrapper hides the signature behind **kwargs.)
        self._accepts_position_ids = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self._causal = is_causal_decoder(self.backbone.config)  # data.packing=shared_prompt needs one
        if disable_dropout:
            # As in TRL's RewardTrainer default: dropout makes chosen and rejected rows of one
            # pair see different noise, which adds variance to the margin the loss reads.
            for module in self.backbone.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
        self.backbone = apply_lora(self.backbone, **(lora or {}))
        self.pooling = pooling
        # No bias: the pairwise loss cannot see a constant offset (it cancels in the margin), and
        # without one the head is exactly the `score` layer of transformers' *ForSequenceClassification
        # decoders, so exports (rmlab.export) give the same rewards.
        # One output per reward the loss trains (OdinLoss: quality and length); rewards are output 0.
        # ensemble=heads: k outputs, each a reward, combined by the ensemble's aggregation.
        heads = getattr(loss, "num_heads", 1)
        if ensemble is not None and heads > 1:
            raise ConfigError(f"ensemble=heads trains {ensemble.heads} Bradley-Terry reward heads, and {type(loss).__name__} "
                              f"(debias=odin) reads {heads} heads of its own that are not rewards to average; "
                              "use one of the two, not both")
        self.ensemble = ensemble
        # Each row of the weight is drawn on its own: k heads start from k independent initialisations.
        self.head = nn.Linear(self.backbone.config.hidden_size, ensemble.heads if ensemble else heads, bias=False)
        nn.init.normal_(self.head.weight, std=1.0 / (self.backbone.config.hidden_size + 1) ** 0.5)
        self.loss_fn = loss
        # Response-set batches (K responses per prompt) train with a set loss (conf/set_loss/).
        self.set_loss_fn = set_loss if set_loss is not None else AllPairsBradleyTerryLoss()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.eval_store = EvalRewardStore()  # per-pair rewards of the current val/test epoch
        self.set_store = EvalSetStore()  # per-set rewards, for response-set data
        self.pairs_seen = 0
        self.on_nonfinite = on_nonfinite
        self.split_by_length = split_by_length
        self.skipped_nonfinite = 0  # optimizer updates dropped for a non-finite loss or reward
        self._drop_update = False

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The run's config and rmlab's version are written by rmlab.checkpoint.RunRecord (a callback of rmlab.train).
        checkpoint["rmlab_pairs_seen"] = self.pairs_seen
        checkpoint["rmlab_skipped_nonfinite"] = self.skipped_nonfinite
        checkpoint["rmlab_sequence_end"] = "eos"  # chat-template inputs end at eos (rmlab.data.tokenize.end_at_eos)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also reads checkpoints written before the head lost its bias (some pre-0.2 ones, see
        rmlab.checkpoint.written_by); the state dict alone tells them apart, so any version is read so."""
        if "head.bias" in state_dict:
            state_dict = dict(state_dict)
            bias = float(state_dict.pop("head.bias").reshape(-1)[0])
            log.warning("checkpoint has a reward-head bias (%.4g), dropped: every reward shifts by that constant; "
                        "margins, accuracy and the loss are unchanged", bias)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.pairs_seen = checkpoint.get("rmlab_pairs_seen", 0)  # resume: keep counting
        self.skipped_nonfinite = checkpoint.get("rmlab_skipped_nonfinite", 0)

    def _rewards(self, pooled: torch.Tensor, all_heads: bool) -> torch.Tensor:
        """[N, hidden] -> [N] rewards (an ensemble's: its aggregation of the heads), or [N, heads] with all_heads."""
        out = self.head(pooled).float()
        if all_heads:
            return out
        return self.ensemble.reward(out) if self.ensemble is not None else out[:, 0]

    def reward_weight(self) -> torch.Tensor:
        """[1, hidden]: the one linear map from the pooled vector to the reward, for exports. OdinLoss: the
        quality head; an ensemble combined by its mean: the mean of the heads' rows (a mean of linear maps
        is one). Raises ConfigError for min / uncertainty_weighted, which no single linear head computes."""
        if self.ensemble is None:
            return self.head.weight[:1]
        if self.ensemble.aggregation != "mean":
            raise ConfigError(f"this reward model's reward is the {self.ensemble.aggregation} of {self.ensemble.heads} heads "
                              "(model.ensemble.aggregation), which no AutoModelForSequenceClassification with num_labels=1 "
                              "computes: export the mean of its heads (one linear head, exact) with aggregation=mean, or "
                              "score with rmlab itself (rmlab.score / rmlab.evaluate / rmlab.audit read the checkpoint)")
        return self.head.weight.mean(dim=0, keepdim=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_heads: bool = False) -> torch.Tensor:
        """input_ids, attention_mask [N, L] -> one reward per row ([N]); all_heads=True: every head's
        output ([N, heads]), the reward first."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._accepts_position_ids:
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.backbone(**kwargs).last_hidden_state
        return self._rewards(self.pooling(hidden, attention_mask), all_heads)

    def _packed_hidden(self, input_ids: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """[B, L, hidden] of packed rows (a prompt then responses that each see the prompt and themselves)."""
        if not (self._causal and self._accepts_position_ids):
            raise ConfigError(f"data.packing=shared_prompt needs a causal decoder that takes position ids; "
                              f"{type(self.backbone).__name__} is not one (its prompt tokens would see the replies). "
                              "Use data.packing=none")
        mask = packed_attention(segments)
        attention = getattr(self.backbone.config, "_attn_implementation", "sdpa")
        if attention == "eager":  # eager attention adds its mask to the scores
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, torch.finfo(torch.float32).min)
        elif attention != "sdpa":
            raise ConfigError(f"data.packing=shared_prompt builds its own attention mask, which "
                              f"attn_implementation={attention!r} cannot take; use sdpa or eager, or data.packing=none")
        return self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids).last_hidden_state

    def packed_rewards(self, input_ids: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor,
                       all_heads: bool = False) -> torch.Tensor:
        """Rewards of SharedPromptCollator rows ([B, L] each; one row per pair, the prompt computed once):
        [2B], chosen rewards then rejected, as forward() gives for the unpacked rows ([2B, heads] with all_heads)."""
        hidden = self._packed_hidden(input_ids, segments, position_ids)
        sides = sequence_masks(segments)  # [2B, L]: chosen sequences, then rejected ones
        half = len(input_ids)
        pooled = torch.cat([self.pooling(hidden, sides[:half]), self.pooling(hidden, sides[half:])])
        return self._rewards(pooled, all_heads)

    def _split_forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       all_heads: bool = False) -> tuple[torch.Tensor, int]:
        """forward() over a padded batch ([N, L]), as two forwards when that cuts padding (model.split_by_length):
        the rows sorted by length and cut where the two parts, each padded to its own longest, hold the
        fewest positions. The shorter side of every pair then stops being padded to its longer side.
        Returns the rewards and the token positions computed, padding included."""
        lengths = attention_mask.sum(dim=1)
        k = split_point(lengths) if self.split_by_length else None
        if k is None:
            return self(input_ids, attention_mask, all_heads), attention_mask.numel()
        order = torch.argsort(lengths)
        parts, positions = [], 0
        for rows in (order[:k], order[k:]):
            mask = attention_mask[rows]
            columns = mask.any(dim=0).nonzero().flatten()  # the span of real tokens, for either padding side
            start, end = int(columns[0]), int(columns[-1]) + 1
            parts.append(self(input_ids[rows, start:end], mask[:, start:end], all_heads))
            positions += len(rows) * (end - start)
        return torch.cat(parts)[torch.argsort(order)], positions

    def set_rewards(self, batch: Batch, all_heads: bool = False) -> tuple[torch.Tensor, int]:
        """Rewards [B, Kmax] of a response-set batch (rmlab.data.set_collate; 0 where a set has fewer
        responses; [B, Kmax, heads] with all_heads) and the token positions computed. Packed: each set's
        prompt is computed once and every response pooled over the prompt and itself; padded: one row per response."""
        if "segments" in batch:
            hidden = self._packed_hidden(batch["input_ids"], batch["segments"], batch["position_ids"])
            masks = response_masks(batch["segments"], batch["response_mask"].shape[1])  # [B, K, L]
            pooled = torch.stack([self.pooling(hidden, masks[:, k]) for k in range(masks.shape[1])], dim=1)
            rewards = self._rewards(pooled.flatten(0, 1), all_heads).view(*masks.shape[:2], -1)
            absent = ~batch["response_mask"][..., None]
            rewards = rewards.masked_fill(absent, 0)
            return (rewards if all_heads else rewards[..., 0]), batch["input_ids"].numel()
        rows, positions = self._split_forward(batch["input_ids"], batch["attention_mask"], all_heads)
        return to_sets(rows, batch["set_rows"]), positions

    def _set_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss [], rewards [B, Kmax], token positions computed) of a response-set batch."""
        return self._set_outputs(batch)[:3]

    def _set_outputs(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """_set_step's three, and with ensemble=heads every head's rewards [B, Kmax, heads] (else None):
        the loss is then the mean over heads of each head's set loss, on its bootstrap weights while training.
        OdinLoss (debias=odin): the set loss of the summed heads plus its disentangling terms; the reward is
        the quality head's."""
        mask, tokens = batch["response_mask"], batch.get("response_tokens")
        if self.training:  # evaluating sets with a label-smoothed pair model is fine
            self.check_set_training()
        if self.ensemble is None and self.head.out_features > 1:
            outputs, positions = self.set_rewards(batch, all_heads=True)  # [B, Kmax, 2]: quality, length
            loss = (self._set_loss(outputs.sum(-1), batch, batch.get("weight"))
                    + self.loss_fn.disentangle(outputs[mask], None if tokens is None else tokens[mask], self.head.weight))
            return loss, outputs[..., 0], positions, None
        if self.ensemble is None:
            rewards, positions = self.set_rewards(batch)
            return self._set_loss(rewards, batch, batch.get("weight")), rewards, positions, None
        outputs, positions = self.set_rewards(batch, all_heads=True)
        boot = self.ensemble.weights(batch.get("index")) if self.training else None
        losses = []
        for h in range(self.ensemble.heads):
            weight = batch.get("weight")
            if boot is not None:
                weight = boot[:, h] if weight is None else weight * boot[:, h]
            losses.append(self._set_loss(outputs[..., h], batch, weight))
        loss = torch.stack(losses).mean()
        rewards = self.ensemble.reward(outputs.flatten(0, 1)).view(mask.shape).masked_fill(~mask, 0)
        return loss, rewards, positions, outputs

    def check_set_training(self) -> None:
        """Raise ConfigError for a loss option that has no response-set form (rmlab.train calls it once the
        data is known to be sets, before fitting)."""
        if self.loss_fn.label_smoothing:
            raise ConfigError("model.loss.label_smoothing smooths the label of a pair; the set losses (set_loss=...) "
                              "have no such option: leave it 0 for response sets")

    def _set_loss(self, rewards: torch.Tensor, batch: Batch, weight: torch.Tensor | None) -> torch.Tensor:
        """The set loss of rewards [B, Kmax] with per-set weights [B] (or None), plus model.loss's centering and
        length terms (set_penalties), as a pair batch gets them."""
        mask = batch["response_mask"]
        return (self.set_loss_fn(rewards, batch["scores"], mask, weight=weight)
                + set_penalties(self.loss_fn, rewards, mask, batch.get("response_tokens")))

    def _log_heads(self, stage: str, margins: torch.Tensor | None, outputs: torch.Tensor, groups: int,
                   accuracy: Callable[[int], torch.Tensor] | None = None) -> None:
        """Each head's accuracy ({stage}/head_<h>/acc) and the heads' spread ({stage}/ensemble/reward_std: the
        mean over responses of the std across heads). Pairs: margins [B, heads] and outputs [2B, heads];
        sets: accuracy(h), head h's accuracy, and outputs [responses, heads]. Epoch means over batches and ranks."""
        options = {"on_step": False, "on_epoch": True, "sync_dist": True, "batch_size": groups}
        for h in range(outputs.shape[1]):
            value = pair_correct(margins[:, h]).mean() if margins is not None else accuracy(h)
            self.log(f"{stage}/head_{h}/acc", value, **options)
        self.log(f"{stage}/ensemble/reward_std", outputs.std(dim=1, correction=0).mean(), **options)

    def _set_training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        loss, rewards, positions = self._set_step(batch)
        n_sets = group_count(batch)
        self.pairs_seen += n_sets * self.trainer.world_size  # groups seen: sets here
        out = {"loss": loss, "positions_computed": positions}
        mask = batch["response_mask"]
        finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(rewards[mask]).all())
        if not self.trainer.strategy.reduce_boolean_decision(not finite, all=False):
            self.log_dict({"train/loss": loss, "train/acc": set_pair_accuracy(rewards, batch["scores"], mask)},
                          prog_bar=True, batch_size=n_sets)
            self.log("train/sets_seen", float(self.pairs_seen), batch_size=n_sets)
            return out
        message = (f"non-finite loss ({float(loss.detach()):.4g}) or reward at global step {self.global_step}, "
                   f"epoch {self.current_epoch}, train batch {batch_idx} (response sets)")
        if self.on_nonfinite == "stop":
            raise NonFiniteError(f"{message}. Lower model.optimizer.lr, check those sets, or set model.on_nonfinite=skip")
        self._drop_update = True
        log.warning("%s: skipping this update (model.on_nonfinite=skip)", message)
        return out

    def _batch_rewards(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """[2B, heads] outputs of a batch (chosen rows, then rejected) and the token positions the
        forward computed, padding included (Throughput reads them from training_step's outputs)."""
        if "segments" in batch:
            outputs = self.packed_rewards(batch["input_ids"], batch["segments"], batch["position_ids"], all_heads=True)
            return outputs, batch["input_ids"].numel()
        return self._split_forward(batch["input_ids"], batch["attention_mask"], all_heads=True)

    def _pair_loss(self, batch: Batch, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [], reward_chosen [B], reward_rejected [B]) from a batch's [2B, heads] outputs."""
        chosen, rejected = outputs.chunk(2)  # [B, heads] each
        extras = {"weight": batch.get("weight"), "response_tokens": batch.get("response_tokens")}
        if self.ensemble is not None:
            return self._heads_pair_loss(batch, chosen, rejected, extras)
        if outputs.shape[1] > 1:  # a multi-head loss (OdinLoss) reads every head, and the heads' weights
            loss = self.loss_fn(chosen, rejected, batch.get("label_margin"), head_weight=self.head.weight, **extras)
        else:
            loss = self.loss_fn(chosen[:, 0], rejected[:, 0], batch.get("label_margin"), **extras)
        return loss, chosen[:, 0], rejected[:, 0]

    def _heads_pair_loss(self, batch: Batch, chosen: torch.Tensor, rejected: torch.Tensor,
                         extras: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ensemble=heads: (the mean over heads of each head's loss, reward_chosen [B], reward_rejected [B])
        from [B, heads] outputs; while training, head h's pairs weigh its bootstrap draws (times the data's weights)."""
        boot = self.ensemble.weights(batch.get("index")) if self.training else None
        losses = []
        for h in range(self.ensemble.heads):
            weight = extras["weight"]
            if boot is not None:
                weight = boot[:, h] if weight is None else weight * boot[:, h]
            losses.append(self.loss_fn(chosen[:, h], rejected[:, h], batch.get("label_margin"), **{**extras, "weight": weight}))
        return torch.stack(losses).mean(), self.ensemble.reward(chosen), self.ensemble.reward(rejected)

    def _pair_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [], reward_chosen [B], reward_rejected [B]) of a batch."""
        return self._pair_loss(batch, self._batch_rewards(batch)[0])

    def setup(self, stage: str) -> None:
        if self.on_nonfinite == "skip" and "deepspeed" in type(self.trainer.strategy).__name__.lower():
            raise ConfigError("model.on_nonfinite=skip cannot drop an update under DeepSpeed (its engine steps "
                              "from its own gradient buffers); use model.on_nonfinite=stop")

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Any]:
        """{"loss": the loss, "positions_computed": token positions the forward computed} (the
        Throughput callback reads the latter from the step's outputs)."""
        if is_set_batch(batch):
            return self._set_training_step(batch, batch_idx)
        outputs, positions = self._batch_rewards(batch)
        loss, reward_chosen, reward_rejected = self._pair_loss(batch, outputs)
        n_pairs = group_count(batch)
        self.pairs_seen += n_pairs * self.trainer.world_size
        out = {"loss": loss, "positions_computed": positions}
        problem = nonfinite_problem(self, self.on_nonfinite, "train", batch, batch_idx, loss, reward_chosen, reward_rejected)
        if problem:
            # Not Lightning's skip (returning None): it refuses that under DDP. The backward still
            # runs on every rank (so DDP's gradient all-reduce is matched), and
            # on_before_optimizer_step then drops the gradients, so the optimizer changes nothing.
            self._drop_update = True
            log.warning("%s: skipping this update (model.on_nonfinite=skip)", problem)
            return out
        reward_margin = reward_chosen - reward_rejected
        self.log_dict(
            {"train/loss": loss, "train/acc": pair_correct(reward_margin).mean(), "train/margin": reward_margin.mean()},
            prog_bar=True, batch_size=n_pairs,
        )
        self.log("train/pairs_seen", float(self.pairs_seen), batch_size=n_pairs)
        self.log("train/skipped_nonfinite", float(self.skipped_nonfinite), batch_size=n_pairs)
        return out

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:
            # Parameters without a gradient are left alone by the optimizer (no step, no weight
            # decay, no moment update); with gradient accumulation the whole accumulated update goes.
            optimizer.zero_grad(set_to_none=True)
            self._drop_update = False
            self.skipped_nonfinite += 1
            self.log("train/skipped_nonfinite", float(self.skipped_nonfinite))

    def _eval_step(self, stage: str, batch: Batch, batch_idx: int) -> None:
        if is_set_batch(batch):
            _, rewards, _, heads = self._set_outputs(batch)
            if heads is not None:
                scores, mask = batch["scores"], batch["response_mask"]
                self._log_heads(stage, None, heads[mask], len(rewards),
                                lambda h: set_pair_accuracy(heads[..., h], scores, mask))
            index = batch.get("index")
            if index is None:
                seen = self.set_store.seen(stage)
                index = torch.arange(seen, seen + len(rewards)) + self.global_rank * 2**40
            self.set_store.add(stage, index, rewards, batch["scores"], batch["response_mask"])
            return
        outputs = self._batch_rewards(batch)[0]
        loss, reward_chosen, reward_rejected = self._pair_loss(batch, outputs)
        if self.ensemble is not None:
            chosen, rejected = outputs.chunk(2)
            self._log_heads(stage, chosen - rejected, outputs, len(chosen))
        problem = nonfinite_problem(self, self.on_nonfinite, stage, batch, batch_idx, loss, reward_chosen, reward_rejected)
        if problem:  # evaluation updates nothing: the pairs are scored anyway, and the metrics show it
            log.warning("%s (model.on_nonfinite=skip: kept in this epoch's %s metrics)", problem, stage)
        index = batch.get("index")
        if index is None:  # a DataModule without row ids: rows numbered per rank, never merged
            seen = self.eval_store.seen(stage)
            index = torch.arange(seen, seen + len(reward_chosen)) + self.global_rank * 2**40
        self.eval_store.add(stage, index, reward_chosen, reward_rejected, batch.get("label_margin"))

    def eval_rewards(self, stage: str) -> ScoredPairs:
        """Every pair of the split scored in this epoch, from all ranks, each once, sorted by index.
        Collective under DDP: every rank calls it (the module at epoch end; callbacks such as
        BiasDiagnostics before that)."""
        return self.eval_store.gathered(stage, self)

    def eval_set_rewards(self, stage: str) -> ScoredSets:
        """eval_rewards for response sets: every set of the split, each once, sorted by index (collective under DDP)."""
        return self.set_store.gathered(stage, self)

    def _eval_epoch_start(self, stage: str) -> None:
        self.eval_store.reset(stage)
        self.set_store.reset(stage)

    def _eval_epoch_end(self, stage: str) -> None:
        # Computed once over the whole split (not averaged per batch or per rank): exact under DDP.
        sets = self.eval_set_rewards(stage)
        if len(sets):  # response sets: the set loss and the share of ordered pairs ranked right, over the whole split
            self.log(f"{stage}/acc", float(set_pair_accuracy(sets.rewards, sets.scores, sets.mask)), prog_bar=True)
            self.log(f"{stage}/loss", float(self.set_loss_fn(sets.rewards, sets.scores, sets.mask)))
            return
        pairs = self.eval_rewards(stage)
        if len(pairs) == 0:
            return
        loss = self.loss_fn(pairs.reward_chosen, pairs.reward_rejected, pairs.label_margin)
        metrics = pair_metrics(stage, pairs.reward_chosen, pairs.reward_rejected, loss)
        acc_key = f"{stage}/acc"
        self.log(acc_key, metrics.pop(acc_key), prog_bar=True)
        self.log_dict(metrics)

    def validation_step(self, batch, batch_idx):
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch, batch_idx):
        self._eval_step("test", batch, batch_idx)

    def on_validation_epoch_start(self):
        self._eval_epoch_start("val")

    def on_test_epoch_start(self):
        self._eval_epoch_start("test")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    def configure_optimizers(self):
        return optim.configure_optimizers(self, self.optimizer_factory, self.scheduler_factory,
                                          self.hparams.weight_decay, self.hparams.warmup_ratio)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        optim.clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
