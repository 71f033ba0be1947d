"""Debiasing on response sets as on pairs: the balance signs and length gaps of a set, hand-computed; the
DataModule's reweight, resample, length-matched batches and counterfactual sets; and the losses of
debias=length_penalty, center, reweight and odin on a set of 2 equal to those on the same pair."""

from __future__ import annotations

import logging
import math
from functools import partial

import pytest
import torch
from datasets import Dataset

from rmlab.data.balance import cue_signs, length_gaps
from rmlab.data.collate import PairCollator, SharedPromptCollator
from rmlab.data.set_collate import PackedSetCollator, SetCollator
from rmlab.errors import ConfigError
from rmlab.model.loss import BradleyTerryLoss, OdinLoss, set_penalties
from rmlab.model.module import RewardModel
from rmlab.model.pooling import LastTokenPooling, MeanPooling

from conftest import _tiny_random
from test_datamodule import datamodule, words, write_jsonl


# -- a set's balance sign and length gap ----------------------------------------------------------------
def test_a_sets_cue_sign_is_the_sign_of_its_ordered_pairs_votes_and_its_gap_their_mean_log_ratio():
    sets = Dataset.from_list([
        # ordered pairs (0,1) 10 > 5: +1; (0,2) 10 < 20: -1; (1,2) 5 < 20: -1 -> -1. Lists: only response 0 -> +1 +1 0 -> +1
        {"responses": ["- a\n- b", "x", "y"], "scores": [3.0, 2.0, 1.0], "response_tokens": [10, 5, 20]},
        # a tie at the top is no ordered pair: (0,2) and (1,2) only, 4 > 2 and 8 > 2: +1; no lists: 0
        {"responses": ["p", "q", "r"], "scores": [1.0, 1.0, 0.0], "response_tokens": [4, 8, 2]},
        # (0,1) 3 > 3? even; (1,0)... scores [0, 1]: (1,0) 3 vs 3: 0 votes -> 0
        {"responses": ["s", "t"], "scores": [0.0, 1.0], "response_tokens": [3, 3]},
    ])
    assert cue_signs(sets, ["length", "markdown_list"]).tolist() == [[-1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
    expected = [(math.log(2) + math.log(0.5) + math.log(0.25)) / 3, (math.log(2) + math.log(4)) / 2, 0.0]
    assert length_gaps(sets).tolist() == pytest.approx(expected, abs=1e-12)


def test_a_set_of_two_has_the_sign_and_gap_of_its_pair():
    pairs = Dataset.from_list([{"chosen": "- a\n- b", "rejected": "b", "chosen_response_tokens": 7, "rejected_response_tokens": 3},
                               {"chosen": "c", "rejected": "- a\n- b", "chosen_response_tokens": 2, "rejected_response_tokens": 9}])
    sets = Dataset.from_list([{"responses": [p["chosen"], p["rejected"]], "scores": [1.0, 0.0],
                               "response_tokens": [p["chosen_response_tokens"], p["rejected_response_tokens"]]} for p in pairs])
    assert cue_signs(sets, ["length", "markdown_list"]).tolist() == cue_signs(pairs, ["length", "markdown_list"]).tolist()
    assert length_gaps(sets).tolist() == length_gaps(pairs).tolist()


# -- the DataModule on sets -------------------------------------------------------------------------------
def _skewed(n: int) -> dict:
    """Set n of SKEWED: scores 2, 0, 1; every better response longer (n = 0, 4, 8) or every one shorter."""
    best, worst, middle = (4, 1, 2) if n % 4 == 0 else (1 + n % 2, 5, 3)
    return {"prompt": f"Question {n}?", "responses": [words(best, "good"), words(worst, "bad"), words(middle, "fair")],
            "scores": [2, 0, 1]}


SKEWED = [_skewed(n) for n in range(12)]  # 3 sets whose better responses are longer, 9 whose are shorter


def test_reweighted_sets_balance_the_length_cue_and_reach_the_loss_as_weights(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SKEWED), balance={"method": "reweight", "cues": ["length"]},
                    packing="none", batch_size=4)
    signs = cue_signs(dm.splits["train"], ["length"])[:, 0]
    weights = torch.tensor(dm.splits["train"]["balance_weight"], dtype=torch.float64)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert float(weights[signs > 0].sum()) == pytest.approx(float(weights[signs < 0].sum()))
    stats = dm.stats["train"]
    assert stats["chosen_more_length"] == round(float((signs > 0).sum() / (signs != 0).sum()), 4)
    assert stats["balance_effective_pairs"] == round(float(weights.sum() ** 2 / (weights ** 2).sum()), 1)
    for batch in dm.train_dataloader():
        assert batch["weight"].tolist() == pytest.approx([float(weights[i]) for i in batch["index"]])
        lengths = [dm.splits["train"][i]["response_tokens"] for i in batch["index"].tolist()]
        assert [row[:len(r)] for row, r in zip(batch["response_tokens"].tolist(), lengths)] == lengths


def test_resampled_sets_are_drawn_by_their_balance_weights(tmp_path):
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SKEWED), balance={"method": "resample", "cues": ["length"]},
                    packing="none", batch_size=4, seed=3)
    assert "balance_weight" not in dm.splits["train"].column_names  # drawn by them, not weighed by them
    signs = cue_signs(dm.splits["train"], ["length"])[:, 0]
    drawn = [i for batch in dm.train_dataloader() for i in batch["index"].tolist()]
    sampler = dm.train_dataloader().sampler
    assert sampler.weights is dm.train_weights and len(drawn) == 12
    assert float(dm.train_weights[signs > 0].sum()) == pytest.approx(float(dm.train_weights[signs < 0].sum()))


def test_length_matched_batches_of_sets_hold_as_many_longer_as_shorter_best_responses(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="rmlab.data.datamodule"):
        dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", SKEWED), length_matched=True, packing="none", batch_size=4)
    assert ("train: data.length_matched: 3 sets favour the longer response, 9 the shorter, 0 even; half of every batch "
            "comes from each side, so each of the 3 on the smaller side is drawn about 2.0 times an epoch") in caplog.text
    gaps = length_gaps(dm.splits["train"])
    assert int((gaps > 0).sum()) > 0 and int((gaps < 0).sum()) > int((gaps > 0).sum())  # skewed before matching
    batches = [batch["index"].tolist() for batch in dm.train_dataloader()]
    assert len(batches) == 3 and all(len(batch) == 4 for batch in batches)
    assert [sorted(float(gaps[i]) > 0 for i in batch) for batch in batches] == [[False, False, True, True]] * 3


def test_counterfactual_sets_pit_the_intact_best_response_against_its_rewrite(tmp_path):
    path = write_jsonl(tmp_path / "sets.jsonl", SKEWED)
    dm = datamodule(path, augment={"share": 0.25, "kinds": ["filler", "markdown"]}, packing="none")
    train = dm.splits["train"]
    assert dm.stats["train"]["augmented"] == 4 and len(train) == 16   # round(12 * 0.25 / 0.75)
    assert (dm.stats["train"]["k_min"], dm.stats["train"]["k_max"], dm.stats["train"]["responses"]) == (2, 3, 12 * 3 + 4 * 2)
    made = train.select(range(12, 16))
    for row in made:
        source = SKEWED[int(row["origin"].rsplit(" ", 1)[-1]) - 1]
        assert row["origin"].startswith(f"augment:{row['augment']} of {path} line ")
        assert row["responses"][0] == source["responses"][0] and row["scores"] == [2.0, 0.0]
        assert row["responses"][1] != source["responses"][1] and source["responses"][1].split()[0] in row["responses"][1]
    assert set(made["augment"]) == {"filler", "markdown"} and set(train.select(range(12))["augment"]) == {""}


def test_a_set_of_ties_lends_no_counterfactual(tmp_path):
    rows = [{"prompt": "Tie?", "responses": ["one answer", "another answer"], "scores": [1, 1]}, *SKEWED[:3]]
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", rows), augment={"share": 0.5, "kinds": ["filler"]}, packing="none")
    assert dm.stats["train"]["augmented"] == 3
    assert all(not row["origin"].endswith(" line 1") for row in dm.splits["train"].select(range(4, 7)))


def test_a_counterfactual_set_whose_rewrite_is_cut_off_is_set_aside_and_not_counted_as_added(tmp_path):
    # The best response ends in a number; max_length 12 ([CLS] "question n ?" [SEP] + 7 response tokens) cuts
    # it off, so its wrong_number rewrite reads as the original: set aside, whatever data.on_bad_row says.
    rows = [{"prompt": f"Question {n}?", "responses": [words(10, "good") + " 42", "bad", "fair fair"], "scores": [2, 0, 1]}
            for n in range(12)]
    dm = datamodule(write_jsonl(tmp_path / "sets.jsonl", rows), augment={"share": 0.25, "kinds": ["wrong_number"]},
                    packing="none", max_length=12, on_bad_row="error")
    stats = dm.stats["train"]
    assert (stats["augmented"], stats["augment_set_aside"], stats["same_ids"], stats["rejected"]) == (0, 4, 0, 0)
    assert len(dm.splits["train"]) == 12 and dm.rejects == []
    assert "augment_set_aside" not in dm.stats["test"]


# -- the losses: a set of 2 is its pair -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return _tiny_random("minilm", tmp_path_factory.mktemp("tiny_bert"))["name_or_path"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return _tiny_random("smollm2", tmp_path_factory.mktemp("tiny_llama"))["name_or_path"]


def _pairs_and_sets() -> tuple[list[dict], list[dict]]:
    """Four pairs (token ids, weights, response lengths) and the same four as sets of 2."""
    generator = torch.Generator().manual_seed(2)
    draw = lambda size: torch.randint(10, 200, (size,), generator=generator).tolist()  # noqa: E731
    pairs, sets = [], []
    for i in range(4):
        prompt, chosen, rejected = draw(3 + i), draw(2 + i % 3), draw(5 - i % 2)
        weight = [0.5, 1.5, 1.0, 2.0][i]
        pairs.append({"chosen_input_ids": prompt + chosen, "rejected_input_ids": prompt + rejected, "index": i,
                      "chosen_response_tokens": len(chosen), "rejected_response_tokens": len(rejected), "balance_weight": weight})
        sets.append({"input_ids": [prompt + chosen, prompt + rejected], "scores": [1.0, 0.0], "index": i,
                     "response_tokens": [len(chosen), len(rejected)], "balance_weight": weight})
    return pairs, sets


LOSSES = {"length_penalty+center": lambda: BradleyTerryLoss(center_rewards_coef=0.3, length_penalty_coef=0.7),
          "odin": lambda: OdinLoss(length_coef=1.0, orthogonal_coef=1.0, center_rewards_coef=0.1, length_penalty_coef=0.2)}


@pytest.mark.parametrize("loss", LOSSES)
def test_a_set_of_two_trains_with_the_loss_of_its_pair(tiny_bert, loss):
    torch.manual_seed(0)
    model = RewardModel(backbone={"name_or_path": tiny_bert}, pooling=MeanPooling(), loss=LOSSES[loss](),
                        optimizer=partial(torch.optim.AdamW))
    model.train()
    pairs, sets = _pairs_and_sets()
    pair_batch = PairCollator(0)(pairs)
    pair_loss, chosen, rejected = model._pair_loss(pair_batch, model._batch_rewards(pair_batch)[0])
    set_loss, rewards, _ = model._set_step(SetCollator(0)(sets))
    assert float(set_loss) == pytest.approx(float(pair_loss), rel=1e-5)
    assert torch.allclose(rewards, torch.stack([chosen, rejected], dim=1), atol=1e-5)  # odin: the quality head's
    plain = model._set_step(SetCollator(0)([{k: v for k, v in s.items() if k != "balance_weight"} for s in sets]))[0]
    assert float(plain) != pytest.approx(float(set_loss), rel=1e-3)  # the weights do change it


def test_packed_sets_of_a_decoder_train_with_the_loss_of_their_pairs(tiny_llama):
    torch.manual_seed(0)
    model = RewardModel(backbone={"name_or_path": tiny_llama}, pooling=LastTokenPooling(), loss=LOSSES["odin"](),
                        optimizer=partial(torch.optim.AdamW))
    model.train()
    pairs, sets = _pairs_and_sets()
    pair_batch = SharedPromptCollator(0)(pairs)
    pair_loss, _, _ = model._pair_loss(pair_batch, model._batch_rewards(pair_batch)[0])
    set_loss, _, _ = model._set_step(PackedSetCollator(0)(sets))
    assert float(set_loss) == pytest.approx(float(pair_loss), rel=1e-5)


def test_set_penalties_on_hand_values():
    rewards = torch.tensor([[1.0, -1.0, 2.0], [0.5, 0.5, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    tokens = torch.tensor([[1, 2, 3], [4, 5, 0]])
    centered = BradleyTerryLoss(center_rewards_coef=0.5)
    assert float(set_penalties(centered, rewards, mask, tokens)) == pytest.approx(0.5 * (2.0 ** 2 + 1.0 ** 2) / 2)
    # corr over the five real responses: rewards (1, -1, 2, .5, .5), tokens (1, 2, 3, 4, 5)
    r, t = torch.tensor([1.0, -1.0, 2.0, 0.5, 0.5]), torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    corr = float(torch.corrcoef(torch.stack([r, t]))[0, 1])
    assert float(set_penalties(BradleyTerryLoss(length_penalty_coef=2.0), rewards, mask, tokens)) == pytest.approx(2 * corr ** 2)
    assert float(set_penalties(BradleyTerryLoss(), rewards, mask, tokens)) == 0.0


def test_label_smoothing_is_refused_on_a_set_batch(tiny_bert):
    model = RewardModel(backbone={"name_or_path": tiny_bert}, pooling=MeanPooling(), loss=BradleyTerryLoss(label_smoothing=0.1),
                        optimizer=partial(torch.optim.AdamW))
    batch = SetCollator(0)(_pairs_and_sets()[1])
    with pytest.raises(ConfigError, match="model.loss.label_smoothing smooths the label of a pair"):
        model.train()._set_step(batch)
    with torch.no_grad():  # evaluating sets with a label-smoothed pair model is fine
        assert model.eval()._set_step(batch)[1].shape == (4, 2)
