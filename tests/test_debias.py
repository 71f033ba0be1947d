"""Debiasing options (conf/debias/): each does what it claims. Balancing makes "chosen is longer" 50%
of the (weighted or sampled) pairs, length-matched batches are balanced batch by batch and rank by
rank, the loss terms have their hand-computed values, the two-head model's quality head is
decorrelated from length, counterfactual pairs come from train pairs only and their probe kinds are
left out of the held-out probe score, and experiment=debias_sweep covers every option."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchmetrics.functional import spearman_corrcoef

from rmlab.config import CONFIG_DIR
from rmlab.data.balance import balance_weights, chosen_longer_share, cue_signs, effective_pairs, length_gaps, length_matched_batches
from rmlab.diagnostics.callback import augment_kinds
from rmlab.diagnostics.report import build_report, scalars
from rmlab.errors import ConfigError
from rmlab.evaluate import load_reward_model
from rmlab.model.loss import BradleyTerryLoss, OdinLoss, batch_correlation
from rmlab.train import train

from conftest import compose_train

REPO = Path(__file__).resolve().parents[1]
SMALL = ["logger=csv", "data.rejects_file=null"]


def _datamodule(overrides: list[str], tmp_path):
    cfg = compose_train([*SMALL, *overrides], tmp_path)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule


# -- balancing --------------------------------------------------------------------------------
def test_balance_weights_by_hand():
    # 3 pairs chosen-longer, 1 chosen-shorter, 1 even: the +1 side shrinks to 2/3 each, the -1 side
    # grows to 2, the even pair keeps 1; already mean 1.
    weights = balance_weights(torch.tensor([[1.0], [1.0], [1.0], [-1.0], [0.0]]), ["length"])
    assert torch.allclose(weights, torch.tensor([2 / 3, 2 / 3, 2 / 3, 2.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert effective_pairs(weights) == pytest.approx(25 / (3 * 4 / 9 + 4 + 1))


def test_balance_weights_balance_two_cues_jointly_and_refuse_one_sided_cues():
    generator = torch.Generator().manual_seed(0)
    length = torch.where(torch.rand(500, generator=generator) < 0.8, 1.0, -1.0)
    markdown = torch.where(torch.rand(500, generator=generator) < 0.3, length, -length)  # tied to length
    markdown[torch.rand(500, generator=generator) < 0.5] = 0.0
    signs = torch.stack([length, markdown], 1)
    weights = balance_weights(signs, ["length", "markdown_list"])
    assert (weights > 0).all() and float(weights.mean()) == pytest.approx(1.0)
    for j in range(2):
        assert float(weights[signs[:, j] > 0].sum()) == pytest.approx(float(weights[signs[:, j] < 0].sum()), rel=1e-8)
    with pytest.raises(ConfigError, match="cue 'bold' is higher on the chosen side in every pair"):
        balance_weights(torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, 0.0]]), ["length", "bold"])


def test_resample_makes_chosen_longer_half_of_the_sampled_pairs(tmp_path):
    datamodule = _datamodule(["debias=resample"], tmp_path)
    train_split = datamodule.splits["train"]
    assert chosen_longer_share(train_split) == pytest.approx(0.8, abs=0.03)  # the planted artifact
    assert datamodule.stats["train"]["chosen_more_length"] == pytest.approx(0.8, abs=0.03)
    for epoch in (0, 1):
        sampler = datamodule.train_dataloader().sampler
        sampler.set_epoch(epoch)
        sampled = list(sampler)
        assert len(sampled) == len(train_split) == 2000
        assert chosen_longer_share(train_split.select(sampled)) == pytest.approx(0.5, abs=0.03)
    assert datamodule.stats["train"]["balance_effective_pairs"] < 2000


def test_reweight_makes_the_weighted_share_exactly_half_and_weights_reach_the_loss(tmp_path):
    datamodule = _datamodule(["debias=reweight"], tmp_path)
    train_split = datamodule.splits["train"]
    assert chosen_longer_share(train_split, datamodule.train_weights) == pytest.approx(0.5, abs=1e-9)
    sampled = list(datamodule.train_dataloader().sampler)
    assert sorted(sampled) == list(range(len(train_split)))  # reweight keeps every pair once per epoch
    batch = next(iter(datamodule.train_dataloader()))
    expected = [train_split[int(i)]["balance_weight"] for i in batch["index"]]
    assert batch["weight"].tolist() == pytest.approx(expected)
    # The loss is the weighted mean of the per-pair losses.
    loss = BradleyTerryLoss()
    chosen, rejected = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 2.0])
    per_pair = torch.nn.functional.softplus(rejected - chosen)
    weight = torch.tensor([0.5, 2.0, 0.5])
    assert float(loss(chosen, rejected, weight=weight)) == pytest.approx(float((per_pair * weight).mean()))


def test_balance_covers_detected_patterns_too(tmp_path):
    # Markdown planted on the chosen side in 90% of the pairs where one side has it (headers: ~75%): balanced with length, jointly.
    datamodule = _datamodule(["debias=reweight", "data.source.format_rate=0.5", "data.source.format_bias=0.9",
                              "data.balance.cues=[length,markdown_header]"], tmp_path)
    train_split, weights = datamodule.splits["train"], datamodule.train_weights
    signs = cue_signs(train_split, ["length", "markdown_header"])
    planted = float((signs[signs[:, 1] != 0, 1] > 0).double().mean())
    assert planted > 0.7 and datamodule.stats["train"]["chosen_more_markdown_header"] == pytest.approx(planted, abs=1e-4)
    for j in range(2):
        assert float(weights[signs[:, j] > 0].sum()) == pytest.approx(float(weights[signs[:, j] < 0].sum()), rel=1e-8)


@pytest.mark.parametrize("overrides,message", [
    (["debias=reweight", "data.balance.cues=[lenght]"], "data.balance.cues: unknown ['lenght']"),
    (["debias=[resample,length_matched]"], "data.length_matched already balances length"),
    (["+data.balance.method_=x"], "unknown option(s) data.balance.method_"),
])
def test_bad_balance_options_are_config_errors(overrides, message, tmp_path):
    with pytest.raises(Exception) as raised:  # hydra's instantiate wraps what the constructor raised
        _datamodule(overrides, tmp_path)
    assert isinstance(raised.value.__cause__, ConfigError) and message in str(raised.value.__cause__)


# -- length-matched batches -------------------------------------------------------------------
def test_length_matched_batches_are_balanced_within_one_gap_bucket(tmp_path):
    datamodule = _datamodule(["debias=length_matched"], tmp_path)
    train_split = datamodule.splits["train"]
    gaps = length_gaps(train_split)
    order = list(datamodule.train_dataloader().sampler)
    assert len(order) == len(train_split)
    batches = [order[i:i + 16] for i in range(0, len(order) - 16 + 1, 16)]
    quartiles = torch.quantile(gaps[gaps != 0].abs(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    for batch in batches:
        longer, shorter, even = int((gaps[batch] > 0).sum()), int((gaps[batch] < 0).sum()), int((gaps[batch] == 0).sum())
        assert longer <= 8 and shorter <= 8 and longer + shorter + even == 16
        differ = [i for i in batch if gaps[i] != 0]  # equal-length pairs fill either side of any bucket
        assert len(set(torch.bucketize(gaps[differ].abs(), quartiles).tolist())) == 1  # one gap bucket
    assert chosen_longer_share(train_split.select(order)) == pytest.approx(0.5, abs=0.02)


def test_length_matched_batches_balance_every_ranks_share():
    gaps = torch.tensor([1.0] * 90 + [-1.0] * 10, dtype=torch.float64) * torch.linspace(0.1, 2.0, 100, dtype=torch.float64)
    batches = length_matched_batches(gaps, batch_size=8, generator=torch.Generator().manual_seed(0), ranks=2)
    assert sum(len(b) for b in batches) == 100
    for batch in batches[:-1]:
        for rank in (0, 1):
            share = gaps[batch[rank::2]]
            assert int((share > 0).sum()) == int((share < 0).sum()) == 2
    with pytest.raises(ConfigError, match="no pair has a shorter chosen response"):
        length_matched_batches(gaps.abs(), 8, torch.Generator())


# -- loss terms -------------------------------------------------------------------------------
def test_length_penalty_is_coef_times_squared_batch_correlation():
    chosen, rejected = torch.tensor([2.0, 0.5, 1.0]), torch.tensor([1.0, 0.0, 1.5])
    tokens = torch.tensor([30, 10, 20, 12, 5, 25])
    rewards = torch.cat([chosen, rejected])
    x, y = rewards - rewards.mean(), tokens.float() - tokens.float().mean()
    pearson = float((x * y).sum() / (x.norm() * y.norm()))
    assert float(batch_correlation(rewards, tokens)) == pytest.approx(pearson)
    plain = float(BradleyTerryLoss()(chosen, rejected))
    got = float(BradleyTerryLoss(length_penalty_coef=0.5)(chosen, rejected, response_tokens=tokens))
    assert got == pytest.approx(plain + 0.5 * pearson ** 2)
    # Its gradient moves the rewards against length: one step lowers the correlation.
    step = rewards.clone().requires_grad_()
    (batch_correlation(step, tokens) ** 2).backward()
    assert abs(float(batch_correlation(step.detach() - 0.5 * step.grad, tokens))) < abs(pearson)
    assert float(batch_correlation(rewards, torch.full((6,), 7))) == 0.0  # equal lengths: no penalty


def test_odin_loss_by_hand():
    chosen = torch.tensor([[1.0, 0.5], [0.2, 1.0], [0.0, 0.1]])  # [quality, length] per pair
    rejected = torch.tensor([[0.5, 0.0], [0.4, 0.2], [0.3, 0.4]])
    tokens = torch.tensor([40, 60, 20, 10, 30, 25])
    head_weight = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    loss = OdinLoss(length_coef=0.7, orthogonal_coef=0.3)
    bt = float(BradleyTerryLoss()(chosen.sum(1), rejected.sum(1)))
    quality, length = torch.cat([chosen, rejected]).unbind(1)
    expected = (bt + 0.7 * (abs(float(batch_correlation(quality, tokens))) - float(batch_correlation(length, tokens)))
                + 0.3 * 0.5)  # cos between (1,0,1) and (0,1,1) = 1/2
    got = loss(chosen, rejected, response_tokens=tokens, head_weight=head_weight)
    assert float(got) == pytest.approx(expected)
    # Evaluation hands it the quality rewards alone: plain Bradley-Terry.
    assert float(loss(chosen[:, 0], rejected[:, 0])) == pytest.approx(float(BradleyTerryLoss()(chosen[:, 0], rejected[:, 0])))


def _length_correlations(best: str) -> tuple[float, float]:
    """Spearman of (quality head, length head) rewards with response length over the test split of the run."""
    model, run_cfg = load_reward_model(torch.load(best, map_location="cpu", weights_only=True))
    datamodule = instantiate(run_cfg.data)
    datamodule.setup("test")
    outputs, tokens = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            outputs.append(model(batch["input_ids"], batch["attention_mask"], all_heads=True))
            tokens.append(batch["response_tokens"])
    outputs, tokens = torch.cat(outputs), torch.cat(tokens).float()
    return tuple(float(spearman_corrcoef(outputs[:, h], tokens)) for h in range(outputs.shape[1]))


@pytest.mark.e2e
@pytest.mark.slow
def test_odin_quality_head_is_decorrelated_from_a_pure_length_artifact(tmp_path):
    # Train: the chosen answer is always the longer one; test: length says nothing. One epoch validates once, at
    # its end, so the best checkpoint is the last weights whatever the (separately generated) val split's size.
    # 400 pairs at lr 1e-4 (25 steps), 100 test pairs: measured plain 0.81, ODIN length head 0.877, quality head 0.043.
    common = [*SMALL, "data.source.length_bias=1.0", "data.source.n_train=400", "model.optimizer.lr=1e-4",
              "data.source.n_val=32", "data.source.n_test=100", "trainer.max_epochs=1", "diagnostics.val_probe_pairs=0",
              "diagnostics.test_probe_pairs=0"]
    plain = train(compose_train(common, tmp_path / "plain"))
    odin = train(compose_train([*common, "debias=odin"], tmp_path / "odin"))
    plain_quality = plain["test/bias/length_spearman"]  # one head: the reward's own correlation, from the run's report
    odin_quality, odin_length = _length_correlations(odin["best_checkpoint"])
    assert plain_quality > 0.6, plain_quality  # the plain reward learned length
    assert odin_length > 0.6, odin_length      # ODIN's length head took it (rising with length)
    assert abs(odin_quality) < 0.3, odin_quality
    assert odin["test/bias/length_spearman"] == pytest.approx(odin_quality, abs=0.05)  # the reported reward is the quality head


# -- counterfactual augmentation --------------------------------------------------------------
def test_counterfactual_pairs_come_from_train_pairs_only(tmp_path):
    datamodule = _datamodule(["debias=counterfactual"], tmp_path)
    train_split = datamodule.splits["train"]
    assert datamodule.stats["train"]["augmented"] == 500 and len(train_split) == 2500  # share 0.2 of 2,500
    added = train_split.filter(lambda kind: kind != "", input_columns="augment")
    assert len(added) == 500
    assert set(added["augment"]) == {"wrong_number", "negation", "truncate", "filler", "markdown"}
    assert all(origin.startswith("augment:") for origin in added["origin"])
    originals = train_split.filter(lambda kind: kind == "", input_columns="augment")
    assert set(added["prompt_key"]) <= set(originals["prompt_key"])
    held_out = set(datamodule.splits["val"]["prompt_key"]) | set(datamodule.splits["test"]["prompt_key"])
    assert not set(added["prompt_key"]) & held_out
    assert "augment" not in datamodule.splits["test"].column_names


def test_augmented_kinds_are_left_out_of_the_held_out_probe_score_augmentation_on_or_off():
    assert augment_kinds({"share": 0.2, "kinds": ["filler", "truncate"]}) == (["filler", "truncate"], True)
    assert augment_kinds({"share": 0.0, "kinds": ["filler"]}) == (["filler"], False)
    pairs = {"prompt": [[{"role": "user", "content": "What is 2 + 2?"}]] * 2, "chosen": ["4.", "It is 4, of course."],
             "rejected": ["5.", "It is 5."], "chosen_response_tokens": [2, 6], "rejected_response_tokens": [2, 4]}
    items = [{"probe": probe, "pair_index": i, "source": "chosen", "prompt": pairs["prompt"][i], "text": "x"}
             for probe in ("filler", "truncate", "insult") for i in (0, 1)]
    item_rewards = torch.tensor([-1.0, -1.0, 5.0, -1.0, 5.0, 5.0])  # filler 1/1, truncate 1/2 right, insult 0/2
    for augmented in (True, False):
        report = build_report(pairs, torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), items, item_rewards,
                              augment_kinds=["filler", "truncate"], augmented=augmented)
        assert [report["probes"][p]["in_training"] for p in ("filler", "truncate", "insult")] == [augmented, augmented, False]
        assert report["probe_mean_acc"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
        assert scalars(report, "test")["test/probe/heldout_mean_acc"] == 0.0  # insult alone, either way


# -- the sweep --------------------------------------------------------------------------------
def test_debias_sweep_covers_every_option_and_options_compose(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=debias_sweep"], return_hydra_config=True)
    options = sorted(p.stem for p in (Path(CONFIG_DIR) / "debias").glob("*.yaml"))
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sorted(cfg.hydra.sweeper.params.debias.split(",")) == options
    assert "test/probe/heldout_mean_acc" in cfg.hydra.callbacks.sweep_summary.metrics
    both = compose_train(["debias=[resample,odin]"], tmp_path)
    assert both.data.balance.method == "resample" and both.model.loss._target_.endswith("OdinLoss")


@pytest.mark.e2e
@pytest.mark.slow
def test_debias_sweep_cli_runs_and_summarises(tmp_path):
    sweep = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "rmlab.train", "experiment=debias_sweep", "debias=none,counterfactual", "seed=0",
         "data.source.n_train=32", "data.source.n_val=16", "data.source.n_test=16", "trainer.max_steps=2",
         "diagnostics.test_probe_pairs=8", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (sweep / "sweep_summary.md").read_text()
    assert "2 jobs: 2 ok, 0 failed" in markdown and "held-out probe acc" in markdown
    import csv
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(r["debias"], r["status"]) for r in rows] == [("none", "ok"), ("counterfactual", "ok")]
    none, counterfactual = (float(r["test/probe/heldout_mean_acc"]) for r in rows)
    assert math.isfinite(none) and math.isfinite(counterfactual)
    for row in rows:  # the same 4 probes for both: those outside data.augment.kinds
        summary = json.loads((sweep / row["job"] / "summary.json").read_text())
        heldout = [summary[f"test/probe/{p}/acc"] for p in ("insult", "repetition", "off_topic", "sycophancy")
                   if f"test/probe/{p}/acc" in summary]
        assert float(row["test/probe/heldout_mean_acc"]) == pytest.approx(sum(heldout) / len(heldout))
