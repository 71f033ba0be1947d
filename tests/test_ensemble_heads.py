"""ensemble=heads: k reward heads on one backbone (rmlab/model/heads.py). Unit tests on a tiny random BERT /
Llama (bootstrap draws, the losses by hand, gradients that a zero bootstrap weight keeps out, packing,
refusals), then one short real training (MiniLM, 3 heads, bootstrap) that the audit, scoring and the
export read."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rmlab.audit import audit
from rmlab.data.collate import PairCollator, SharedPromptCollator
from rmlab.data.set_collate import PackedSetCollator, SetCollator
from rmlab.errors import ConfigError
from rmlab.export import export
from rmlab.model.heads import HeadEnsemble, bootstrap_weights
from rmlab.model.loss import AllPairsBradleyTerryLoss, BradleyTerryLoss, DavidsonTiesLoss, OdinLoss, PlackettLuceLoss
from rmlab.model.module import RewardModel
from rmlab.model.pooling import LastTokenPooling, MeanPooling
from rmlab.train import train
from rmlab.trained import Scorer, load_checkpoint, load_reward_model, rmlab_tokenizer, tokenizing_function

from conftest import _tiny_random, compose_entry, compose_train

LN2, LN3 = math.log(2), math.log(3)


def heads_model(backbone: str, pooling: torch.nn.Module, loss: torch.nn.Module | None = None, **ensemble) -> RewardModel:
    return RewardModel(backbone={"name_or_path": backbone}, pooling=pooling, loss=loss or BradleyTerryLoss(),
                       optimizer=partial(torch.optim.AdamW), ensemble=HeadEnsemble(**{"heads": 3, **ensemble}))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return _tiny_random("minilm", tmp_path_factory.mktemp("tiny_bert"))["name_or_path"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return _tiny_random("smollm2", tmp_path_factory.mktemp("tiny_llama"))["name_or_path"]


def _pairs(n: int = 5) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    draw = lambda size: torch.randint(10, 200, (size,), generator=generator).tolist()  # noqa: E731
    return [{"chosen_input_ids": (p := draw(3 + 2 * i)) + draw(2 + i % 3), "rejected_input_ids": p + draw(1 + i), "index": 10 + i}
            for i in range(n)]


def _sets() -> list[dict]:
    """Sets of 2, 4 and 3 responses to one prompt each (ids only)."""
    generator = torch.Generator().manual_seed(1)
    draw = lambda size: torch.randint(10, 200, (size,), generator=generator).tolist()  # noqa: E731
    sets = []
    for i, k in enumerate((2, 4, 3)):
        prompt = draw(4 + i)
        sets.append({"input_ids": [prompt + draw(2 + j) for j in range(k)], "scores": list(range(k)), "index": i})
    return sets


# -- the bootstrap draws -------------------------------------------------------------------------------

def test_bootstrap_weights_depend_on_the_row_alone_and_differ_per_head():
    rows = torch.arange(2000)
    weights = bootstrap_weights(rows, heads=3, seed=0)
    assert weights.shape == (2000, 3) and weights.dtype == torch.float32
    # the same rows in another batch, order or process draw the same weights (resume, DDP)
    assert torch.equal(bootstrap_weights(torch.tensor([1999, 7, 42]), 3, 0), weights[[1999, 7, 42]])
    assert torch.equal(bootstrap_weights(rows, 3, 0), weights)
    assert not torch.equal(bootstrap_weights(rows, 3, 1), weights)  # another seed, another bootstrap
    assert all(not torch.equal(weights[:, a], weights[:, b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    # Poisson(1): whole counts, mean and variance 1, about e^-1 of the rows left out of each head
    assert torch.equal(weights, weights.round()) and weights.min() == 0
    assert weights.mean(dim=0).sub(1).abs().max() < 0.06 and weights.var(dim=0).sub(1).abs().max() < 0.1
    assert (weights == 0).float().mean(dim=0).sub(math.exp(-1)).abs().max() < 0.03


def test_ensemble_config_is_checked():
    with pytest.raises(ConfigError, match="needs 2 or more heads"):
        HeadEnsemble(heads=1)
    with pytest.raises(ConfigError, match="aggregation='median'; choose one of"):
        HeadEnsemble(aggregation="median")
    with pytest.raises(ConfigError, match="carry none .* model.ensemble.bootstrap=false"):
        HeadEnsemble(bootstrap=True).weights(None)
    assert HeadEnsemble(bootstrap=False).weights(None) is None


def test_odin_and_a_head_ensemble_are_refused_together(tiny_bert):
    with pytest.raises(ConfigError, match="OdinLoss .* reads 2 heads of its own .* use one of the two"):
        heads_model(tiny_bert, MeanPooling(), OdinLoss())


# -- the losses, by hand ------------------------------------------------------------------------------

def test_pair_loss_is_the_mean_over_heads_of_each_heads_bootstrap_weighted_bradley_terry(tiny_bert):
    model = heads_model(tiny_bert, MeanPooling(), seed=3)
    # margins r_chosen - r_rejected per pair (rows) and head (columns): -log sigmoid(0) = ln 2,
    # -log sigmoid(ln 3) = ln 4/3, -log sigmoid(-ln 3) = ln 4
    margins = torch.tensor([[0.0, LN3, -LN3], [LN3, 0.0, 0.0]])
    nll = [[LN2, math.log(4 / 3), math.log(4)], [math.log(4 / 3), LN2, LN2]]
    chosen = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    outputs = torch.cat([chosen, chosen - margins])
    batch = {"index": torch.tensor([5, 9]), "weight": torch.tensor([0.5, 2.0])}
    boot = bootstrap_weights(batch["index"], 3, 3)
    expected = sum(sum(batch["weight"][b] * boot[b, h] * nll[b][h] for b in range(2)) / 2 for h in range(3)) / 3
    model.train()
    loss, reward_chosen, reward_rejected = model._pair_loss(batch, outputs)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert torch.allclose(reward_chosen, chosen.mean(dim=1)) and torch.allclose(reward_rejected, (chosen - margins).mean(dim=1))
    model.eval()  # evaluation: every pair once, no bootstrap
    loss, _, _ = model._pair_loss(batch, outputs)
    plain = sum(sum(batch["weight"][b] * nll[b][h] for b in range(2)) / 2 for h in range(3)) / 3
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)


def test_set_losses_weigh_each_set():
    # two sets of two: margins 0 and ln 3; weights 2 and 0 leave the first set alone, twice
    rewards = torch.tensor([[1.0, 1.0], [LN3, 0.0]])
    scores, mask, weight = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.ones(2, 2, dtype=torch.bool), torch.tensor([2.0, 0.0])
    assert float(AllPairsBradleyTerryLoss()(rewards, scores, mask, weight)) == pytest.approx(2 * LN2 / 2)
    assert float(PlackettLuceLoss()(rewards, scores, mask, weight)) == pytest.approx(2 * LN2 / 2)
    assert float(DavidsonTiesLoss()(rewards, scores, mask, weight)) == pytest.approx(2 * LN3 / 2)  # nu = 1: log 3 at d = 0
    for loss in (AllPairsBradleyTerryLoss(), PlackettLuceLoss(), DavidsonTiesLoss()):
        assert float(loss(rewards, scores, mask, torch.ones(2))) == pytest.approx(float(loss(rewards, scores, mask)))


def _index_left_out_of_head(head: int, seed: int) -> int:
    """A row whose bootstrap weight is 0 for `head` and not 0 for the others."""
    weights = bootstrap_weights(torch.arange(200), 3, seed)
    others = [h for h in range(3) if h != head]
    return next(i for i in range(200) if weights[i, head] == 0 and bool((weights[i, others] > 0).all()))


@pytest.mark.parametrize("kind", ["pairs", "sets"])
def test_a_head_learns_nothing_from_an_example_its_bootstrap_leaves_out(tiny_bert, kind):
    model = heads_model(tiny_bert, MeanPooling(), seed=0).train()
    row = _index_left_out_of_head(1, seed=0)
    if kind == "pairs":
        batch = PairCollator(0, "right")([{**_pairs(1)[0], "index": row}])
        loss = model._pair_step(batch)[0]
    else:
        batch = SetCollator(0, "right")([{**_sets()[1], "index": row}])
        loss = model._set_step(batch)[0]
    loss.backward()
    grad = model.head.weight.grad  # [heads, hidden]
    assert bool((grad[1] == 0).all()) and bool((grad[0] != 0).any()) and bool((grad[2] != 0).any())


# -- packing: the same heads either way ----------------------------------------------------------------

def test_packed_head_rewards_and_losses_equal_the_padded_ones(tiny_llama):
    torch.manual_seed(0)
    model = heads_model(tiny_llama, LastTokenPooling(), seed=0)
    pairs, sets = _pairs(), _sets()
    packed, plain = SharedPromptCollator(2)(pairs), PairCollator(2, "right")(pairs)
    with torch.no_grad():
        got = model.packed_rewards(packed["input_ids"], packed["segments"], packed["position_ids"], all_heads=True)
        torch.testing.assert_close(got, model(plain["input_ids"], plain["attention_mask"], all_heads=True), atol=1e-4, rtol=1e-4)
        assert got.shape == (2 * len(pairs), 3)
        packed_sets, padded_sets = model.set_rewards(PackedSetCollator(2)(sets), all_heads=True)[0], \
            model.set_rewards(SetCollator(2, "right")(sets), all_heads=True)[0]
        torch.testing.assert_close(packed_sets, padded_sets, atol=1e-4, rtol=1e-4)
        assert packed_sets.shape == (3, 4, 3) and bool((packed_sets[0, 2:] == 0).all())  # the set of 2: the rest absent
        model.train()
        torch.testing.assert_close(model._pair_step(packed)[0], model._pair_step(plain)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model._set_step(PackedSetCollator(2)(sets))[0], model._set_step(SetCollator(2, "right")(sets))[0],
                                   atol=1e-5, rtol=1e-5)


# -- one real training: MiniLM, 3 heads, bootstrap ----------------------------------------------------

HEADS_RUN = ["experiment=smoke", "ensemble=heads", "data.source.n_train=32", "data.source.n_val=16", "data.source.n_test=16",
             "data.batch_size=8", "data.max_length=128", "model.optimizer.lr=1e-3", "diagnostics.enabled=false"]
SETS = [
    {"prompt": "What is 2 + 3?", "responses": ["5", "6", "It is 7.", "Five, which is 5."], "scores": [1, 0, 0, 1]},
    {"prompt": "Sort 3 1 2.", "responses": ["1 2 3", "3 2 1", "1 3 2", "2 1 3", "The sorted list is 1 2 3."],
     "scores": [1, 0, 0, 0, 1]},
]


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("heads_run")
    summary = train(compose_train(HEADS_RUN, run_dir))
    return run_dir, summary, summary["best_checkpoint"]


def _head_rewards(ckpt: str, texts: list[tuple[str, str]]) -> torch.Tensor:
    """[N, 3] every head's reward of (prompt, response), each row scored alone."""
    model, run_cfg = load_reward_model(load_checkpoint(ckpt))
    encode = tokenizing_function(*rmlab_tokenizer(run_cfg))
    rows = [encode([{"role": "user", "content": p}], r)["chosen_input_ids"] for p, r in texts]
    with torch.no_grad():
        return torch.cat([model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), all_heads=True) for ids in rows])


@pytest.mark.e2e
@pytest.mark.slow
def test_a_head_ensemble_trains_and_logs_each_head(heads_run):
    from test_docs import logged_keys, undocumented

    run_dir, summary, ckpt = heads_run
    assert all(0.0 <= summary[f"test/head_{h}/acc"] <= 1.0 for h in range(3)) and summary["test/ensemble/reward_std"] > 0
    keys = logged_keys(run_dir)
    assert {"val/head_0/acc", "val/head_1/acc", "val/head_2/acc", "val/ensemble/reward_std"} <= keys
    assert undocumented(keys) == [], "add these keys to docs/metrics.md"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["rmlab_config"]["model"]["ensemble"]["heads"] == 3
    heads = state["state_dict"]["head.weight"]
    assert heads.shape == (3, 384) and all(not torch.allclose(heads[a], heads[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
    rewards = _head_rewards(ckpt, [(s["prompt"], r) for s in SETS for r in s["responses"]])
    assert rewards.std(dim=1).min() > 0  # the heads disagree on every response


@pytest.mark.e2e
@pytest.mark.slow
def test_scoring_reads_the_configured_aggregation_and_the_audit_draws_each_head(heads_run, tmp_path):
    _, _, ckpt = heads_run
    texts = [(s["prompt"], r) for s in SETS for r in s["responses"]]
    heads = _head_rewards(ckpt, texts)
    scorer = Scorer(ckpt)  # rmlab.score, rmlab.evaluate and rmlab.audit's gold read rewards through it
    assert scorer.heads == 3
    encode = tokenizing_function(scorer.tokenizer, scorer.settings)
    ids = encode([{"role": "user", "content": texts[0][0]}], texts[0][1])["chosen_input_ids"]
    one = scorer(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert float(one) == pytest.approx(float(heads[0].mean()), abs=1e-5)

    sets_file = tmp_path / "sets.jsonl"
    sets_file.write_text("".join(json.dumps(row) + "\n" for row in SETS))
    out = tmp_path / "audit"
    report = audit(compose_entry("audit", [f"ckpt={ckpt}", f"data.path={sets_file}", "bon.max_n=2", "~logger"], out))
    curves = report["best_of_n"]["curves"]
    assert sorted(curves) == ["gold", "head_0", "head_1", "head_2", "longest", "mean", "min", "random", "uncertainty_weighted"]
    assert set(report["uncertainty"]) == {"mean_std", "std_error_spearman"} and report["uncertainty"]["mean_std"] > 0
    rows = [json.loads(line) for line in (out / "rewards.jsonl").read_text().splitlines()]
    flat = {name: torch.tensor([v for row in rows for v in row[name]]) for name in ("head_0", "head_1", "head_2", "mean", "min")}
    torch.testing.assert_close(torch.stack([flat[f"head_{h}"] for h in range(3)], dim=1), heads, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flat["mean"], heads.mean(dim=1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(flat["min"], heads.min(dim=1).values, atol=1e-4, rtol=1e-4)


@pytest.mark.e2e
@pytest.mark.slow
def test_the_mean_of_heads_exports_exactly_and_min_is_refused(heads_run, tmp_path):
    _, _, ckpt = heads_run
    out = tmp_path / "rm"
    export(compose_entry("export", [f"ckpt={ckpt}", f"out={out}", "remote_code=true", "atol=1e-4"], tmp_path / "run"))
    folder = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    texts = [(s["prompt"], r) for s in SETS for r in s["responses"]]
    heads = _head_rewards(ckpt, texts)
    scorer = Scorer(str(out), trust_remote_code=True)
    encode = tokenizing_function(scorer.tokenizer, scorer.settings)
    with torch.no_grad():
        exported = torch.cat([folder(input_ids=torch.tensor([ids])).logits[:, 0] for ids in
                              (encode([{"role": "user", "content": p}], r)["chosen_input_ids"] for p, r in texts)])
    torch.testing.assert_close(exported, heads.mean(dim=1), atol=1e-4, rtol=1e-4)

    # a checkpoint whose reward is the min of its heads: refused, naming the way out; with it, the mean
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["rmlab_config"]["model"]["ensemble"]["aggregation"] = "min"
    min_ckpt = tmp_path / "min.ckpt"
    torch.save(state, min_ckpt)
    ids = encode([{"role": "user", "content": texts[0][0]}], texts[0][1])["chosen_input_ids"]
    own = Scorer(str(min_ckpt))(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert float(own) == pytest.approx(float(heads[0].min()), abs=1e-5)  # scoring reads the checkpoint's own aggregation
    with pytest.raises(ConfigError, match="min of its 3 heads .* add aggregation=mean"):
        export(compose_entry("export", [f"ckpt={min_ckpt}", f"out={tmp_path / 'min'}", "remote_code=true"], tmp_path / "run_min"))
    assert not (tmp_path / "min").exists()
