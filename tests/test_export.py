"""`python -m rmlab.export`: a trained checkpoint as a Hugging Face folder that plain transformers loads
and that gives rmlab's rewards, for a real decoder (SmolLM2, native Llama class) and a real encoder
(MiniLM, mean pooling: refused, or exported with its own modeling file), under both padding sides."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import compose_train
from rmlab.config import CONFIG_DIR
from rmlab.evaluate import load_checkpoint, load_reward_model
from rmlab.export import PAD_TOKEN, encoder, export, rmlab_tokenizer, validation_rewards
from rmlab.train import train

ATOL = 1e-4  # fp32; measured up to ~1e-5 (SmolLM2, left padding) and ~5e-7 (MiniLM)
MODELS = {  # both packaged backbones are installed in CI; a few steps of real training each
    "smollm2": ["model=smollm2_135m", "pooling=last"],
    "minilm": ["model=minilm", "pooling=mean", "data.padding_side=left"],
    "minilm_lora": ["model=minilm", "pooling=mean", "model.lora.r=4", "model.optimizer.lr=1e-2"],  # adapters move
}
PROMPTS = [
    [{"role": "user", "content": "What is 7 + 5?"}],
    [{"role": "user", "content": "Sort these numbers: 5, 3, 9, 1, 22, 17, 4. Reply with the sorted list only."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Convert 3 km to metres."}],
]
RESPONSES = ["12", "1, 3, 4, 5, 9, 17, 22", "3 km is 3,000 metres, since one kilometre is 1,000 metres."]
_cache: dict = {}  # trained checkpoints and exports, shared with test_score.py (one of each per session)


def trained_checkpoint(name: str, tmp_path_factory) -> Path:
    """Best checkpoint of a few real training steps on synthetic pairs (cached per session)."""
    if ("ckpt", name) not in _cache:
        overrides = ["experiment=smoke", *MODELS[name], "data.source.n_train=4", "data.source.n_val=4",
                     "data.source.n_test=4", "data.batch_size=4", "data.max_length=128", "test_after_fit=false",
                     "diagnostics.enabled=false"]
        summary = train(compose_train(overrides, tmp_path_factory.mktemp(f"train_{name}")))
        _cache["ckpt", name] = Path(summary["best_checkpoint"])
    return _cache["ckpt", name]


def export_config(overrides: list[str]):
    """The config `python -m rmlab.export <overrides>` composes."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("export", overrides=overrides)


def exported_folder(name: str, tmp_path_factory) -> Path:
    """The checkpoint exported in-process (remote code where its pooling needs it; cached per session)."""
    if ("export", name) not in _cache:
        out = tmp_path_factory.mktemp(f"export_{name}") / "rm"
        export(export_config([f"ckpt={trained_checkpoint(name, tmp_path_factory)}", f"out={out}",
                              f"remote_code={str(name == 'minilm').lower()}", f"atol={ATOL}"]))
        _cache["export", name] = out
    return _cache["export", name]


def reward_model(ckpt: Path):
    """rmlab's RewardModel of a checkpoint and its run config (cached per session)."""
    if ("model", ckpt) not in _cache:
        _cache["model", ckpt] = load_reward_model(load_checkpoint(str(ckpt)))
    return _cache["model", ckpt]


def rmlab_rewards(ckpt: Path, prompts: list, responses: list[str]) -> torch.Tensor:
    """What rmlab computes: its own tokenization, each row scored alone (no padding at all)."""
    model, run_cfg = reward_model(ckpt)
    encode = encoder(*rmlab_tokenizer(run_cfg))
    with torch.no_grad():
        return torch.cat([model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                          for ids in (encode(p, r)["chosen_input_ids"] for p, r in zip(prompts, responses))])


def run_export(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "-m", "rmlab.export", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint("smollm2", tmp_path_factory), exported_folder("smollm2", tmp_path_factory)


@pytest.fixture(scope="module")
def minilm_ckpt(tmp_path_factory) -> Path:
    return trained_checkpoint("minilm", tmp_path_factory)


def test_decoder_export_is_the_native_class_and_gives_rmlab_rewards_under_both_paddings(smollm2):
    ckpt, folder = smollm2
    expected = rmlab_rewards(ckpt, PROMPTS, RESPONSES)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()  # no trust_remote_code, no rmlab
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    texts = [tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(PROMPTS, RESPONSES)]
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        lengths = batch["attention_mask"].sum(1).tolist()
        assert len(set(lengths)) == 3 and max(lengths) <= 128  # real padding, nothing over max_length
        with torch.no_grad():
            rewards = model(**batch).logits[:, 0]
        assert rewards == pytest.approx(expected.tolist(), abs=ATOL), side


def test_decoder_export_pads_with_a_token_no_input_contains(smollm2):
    """SmolLM2 pads with its eos <|im_end|>; transformers pools the last id != pad_token_id, so an
    input ending in <|im_end|> would be scored at the token before it. The export adds <|pad|>."""
    ckpt, folder = smollm2
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == config["pad_token_id"] == 49152
    assert config["vocab_size"] == 49153 and tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")) \
        == ["model.safetensors"]

    # A response cut at the end of the budget can end in <|im_end|> (rmlab truncates it that way).
    text = tokenizer.apply_chat_template(PROMPTS[0] + [{"role": "assistant", "content": "12"}], tokenize=False)
    ending_in_eos = tokenizer(text.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    assert ending_in_eos[-1] == 2
    longer = tokenizer(text + text, add_special_tokens=False)["input_ids"]
    model, _ = reward_model(ckpt)
    with torch.no_grad():
        expected, one_short = (model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()
                               for ids in (ending_in_eos, ending_in_eos[:-1]))
    exported = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer.padding_side = "right"
    batch = tokenizer.pad({"input_ids": [ending_in_eos, longer]}, return_tensors="pt")
    with torch.no_grad():
        assert exported(**batch).logits[0, 0].item() == pytest.approx(expected, abs=ATOL)
        # What a naive export (pad = eos) would ship: the last id != eos is the token before the eos.
        exported.config.pad_token_id = 2
        naive_ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 2)
        assert exported(input_ids=naive_ids, attention_mask=batch["attention_mask"]).logits[0, 0].item() == \
            pytest.approx(one_short, abs=ATOL)
    assert abs(expected - one_short) > 10 * ATOL


def test_export_stores_validation_reward_statistics_and_tokenization(smollm2):
    ckpt, folder = smollm2
    info = json.loads((folder / "config.json").read_text())["rmlab"]
    pairs, rewards = validation_rewards(*reward_model(ckpt))
    assert info["val_rewards"] == 2 * len(pairs) == 8
    assert info["reward_mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert info["reward_std"] == pytest.approx(rewards.std(unbiased=False).item(), abs=1e-6)
    assert {k: info[k] for k in ("max_length", "chat_template", "padding_side", "pooling", "overlong")} == \
        {"max_length": 128, "chat_template": True, "padding_side": "right", "pooling": "last", "overlong": "truncate"}
    assert info["max_abs_diff"] <= ATOL


def test_encoder_mean_pooling_is_refused_without_remote_code_and_exact_with_it(minilm_ckpt, tmp_path):
    with pytest.raises(ValueError) as refused:
        export(export_config([f"ckpt={minilm_ckpt}", f"out={tmp_path / 'plain'}"]))
    assert str(refused.value).startswith("pooling=mean on BertConfig: transformers has no sequence-classification head "
                                         "that mean-pools, so a plain transformers export would change the rewards. "
                                         "Set remote_code=true")
    assert not (tmp_path / "plain").exists()

    out = tmp_path / "remote"
    result = run_export([f"ckpt={minilm_ckpt}", f"out={out}", "remote_code=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"-> {out} (remote code modeling_rmlab_reward.py, pooling=mean; max |reward - rmlab| = " in result.stdout
    modeling = (out / "modeling_rmlab_reward.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+rmlab", modeling, re.MULTILINE)  # self-contained
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {"AutoModelForSequenceClassification": "modeling_rmlab_reward.RmlabRewardModel"}
    assert config["rmlab"]["pooling"] == "mean" and config["rmlab"]["padding_side"] == "left"

    expected = rmlab_rewards(minilm_ckpt, PROMPTS[:2], RESPONSES[:2])
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [p[0]["content"] for p in PROMPTS[:2]]
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer(prompts, RESPONSES[:2], padding=True, return_tensors="pt")  # [CLS] p [SEP] r [SEP]
        with torch.no_grad():
            rewards = model(**batch).logits[:, 0]  # token_type_ids are passed and ignored, as rmlab trains
        assert rewards == pytest.approx(expected.tolist(), abs=ATOL), side


def test_lora_checkpoint_exports_with_the_adapters_merged(tmp_path_factory, tmp_path):
    lora = trained_checkpoint("minilm_lora", tmp_path_factory)
    assert any("lora_" in key for key in load_checkpoint(str(lora))["state_dict"])
    out = tmp_path / "lora"
    export(export_config([f"ckpt={lora}", f"out={out}", "remote_code=true", f"atol={ATOL}"]))
    state = load_file(out / "model.safetensors")
    assert not any("lora" in key for key in state)  # plain weights, no peft needed to load

    expected = rmlab_rewards(lora, PROMPTS, RESPONSES)  # the unmerged LoRA model
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer([p[0]["content"] for p in PROMPTS[:2]], RESPONSES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0]
        lora_model, _ = reward_model(lora)
        with lora_model.backbone.disable_adapter():  # the same model without its adapters
            without = rmlab_rewards(lora, PROMPTS[:2], RESPONSES[:2])
    assert rewards == pytest.approx(expected[:2].tolist(), abs=ATOL)
    assert (without - expected[:2]).abs().max() > 100 * ATOL  # the adapters matter, and were merged


def test_existing_folders_are_refused(minilm_ckpt, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty; choose another folder or set overwrite=true"):
        export(export_config([f"ckpt={minilm_ckpt}", f"out={tmp_path / 'taken'}", "remote_code=true"]))
