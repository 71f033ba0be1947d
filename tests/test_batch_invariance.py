"""A sequence gets the same reward alone and padded inside a batch, for both padding sides,
for a real encoder (MiniLM) and a real decoder (SmolLM2, whose pad id == eos id)."""

import pytest
import torch

from rmlab.data.collate import PairCollator
from rmlab.model.pooling import ClsPooling, LastTokenPooling, MeanPooling

from conftest import make_reward_model

TEXTS = [
    "What is 2 + 2? The answer is 4.",
    "Name a colour. Blue.",
    "Sort 3, 1, 2 in ascending order. Sure! Here is the list sorted from smallest to largest: 1, 2, 3.",
]


def _token_ids(backbone_cfg: dict) -> list[list[int]]:
    if not backbone_cfg["packaged"]:
        return [[5 + (7 * i + j) % 150 for j in range(n)] for i, n in enumerate((9, 4, 17))]
    from rmlab.hub import load_tokenizer

    tokenizer = load_tokenizer(**{k: v for k, v in backbone_cfg.items() if k not in ("kind", "packaged")})
    ids = [tokenizer(t)["input_ids"] for t in TEXTS]
    if backbone_cfg["kind"] == "smollm2":
        ids = [i + [tokenizer.eos_token_id] for i in ids]  # ends with the id that is also the pad id
    assert len({len(i) for i in ids}) == 3
    return ids


@pytest.fixture(scope="module")
def model_and_ids(backbone_cfg):
    model = make_reward_model(backbone_cfg, LastTokenPooling()).eval()
    return model, _token_ids(backbone_cfg), backbone_cfg["kind"]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("pooling", [LastTokenPooling(), MeanPooling(), ClsPooling()], ids=["last", "mean", "cls"])
def test_reward_alone_equals_reward_in_padded_batch(model_and_ids, padding_side, pooling):
    model, ids, kind = model_and_ids
    model.pooling = pooling
    pad_id = 2 if kind == "smollm2" else 0
    collate = PairCollator(pad_token_id=pad_id, padding_side=padding_side)
    with torch.no_grad():
        alone = torch.cat([model(**collate.pad([seq])) for seq in ids])
        batch = collate.pad(ids)
        assert (batch["attention_mask"] == 0).any()
        padded = model(**batch)
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)


def test_naive_last_position_scores_padding_under_right_padding(model_and_ids):
    """The bug this pooling exists for: hidden[:, -1] reads a pad token for every shorter row."""
    model, ids, kind = model_and_ids
    batch = PairCollator(pad_token_id=2 if kind == "smollm2" else 0, padding_side="right").pad(ids)
    with torch.no_grad():
        hidden = model.backbone(**batch).last_hidden_state
        naive = model.head(hidden[:, -1]).squeeze(-1)
        alone = torch.cat([model.head(model.backbone(input_ids=torch.tensor([s])).last_hidden_state[:, -1]).squeeze(-1) for s in ids])
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    shorter = [i for i in range(len(ids)) if i != longest]
    assert torch.allclose(naive[longest], alone[longest], atol=1e-4)
    assert not torch.allclose(naive[shorter], alone[shorter], atol=1e-3)
