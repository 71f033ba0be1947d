"""Every export, loaded the way each consumer that knows nothing about rmlab loads it, gives rmlab's
rewards or refuses to load: plain transformers, `pipeline("text-classification")`, TRL's GRPO reward
step, a PPO-style scorer of generated ids, and older transformers (4.46, the oldest rmlab supports;
4.51, which RewardBench pins). One export per route: decoder + last (native Llama), BERT encoder + pooler (native
BertForSequenceClassification), mean pooling with remote code (MiniLM, LoRA merged)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_export import ATOL, PROMPTS, RESPONSES, exported_folder, rmlab_rewards, trained_checkpoint
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
from trl.data_utils import apply_chat_template

from rmlab.export import OLDEST_TRANSFORMERS
from rmlab.hardware import cache_root

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROUTES = {"decoder": "smollm2", "encoder": "minilm", "remote": "minilm_lora"}
LONG = [{"role": "user", "content": "Please read all of this carefully before you answer. " * 40}]  # over max_length=128
CHATS = [p + [{"role": "assistant", "content": r}] for p, r in zip(PROMPTS, RESPONSES)]  # one multi-turn
OVERLONG = LONG + [{"role": "assistant", "content": "Understood: the answer is 4."}]
OLD_TRANSFORMERS = {OLDEST_TRANSFORMERS: "tokenizers<0.21", "4.51.3": "tokenizers<0.22"}  # with the tokenizers each needs


@pytest.fixture(scope="module", params=list(ROUTES))
def route(request, tmp_path_factory) -> tuple[str, Path, Path]:
    name = ROUTES[request.param]
    return request.param, trained_checkpoint(name, tmp_path_factory), exported_folder(name, tmp_path_factory)


def expected(ckpt: Path, chats: list[list[dict]]) -> list[float]:
    """rmlab's rewards of the chats' last (assistant) turns, each row scored alone."""
    return rmlab_rewards(ckpt, [c[:-1] for c in chats], [c[-1]["content"] for c in chats]).tolist()


def load(folder: Path, remote: bool, **kwargs):
    """AutoModelForSequenceClassification as consumers call it (without trust_remote_code it must
    refuse a remote-code export, never load it as another class) and the folder's tokenizer."""
    if remote:
        with pytest.raises(ValueError, match="trust_remote_code"):
            AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)


def test_plain_transformers_with_the_chat_template(route):
    kind, ckpt, folder = route
    model, tokenizer = load(folder, kind == "remote")
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in CHATS]
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # add_special_tokens=True, the default
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0]
    assert rewards.tolist() == pytest.approx(expected(ckpt, CHATS), abs=ATOL)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # really padded


def test_overlong_input_is_truncated_as_rmlab_truncates(route):
    """rmlab keeps the response and cuts the prompt from the left; the folder's tokenizer does the
    same: truncation_side=left at model_max_length (decoders), text pairs with only_first (encoders)."""
    kind, ckpt, folder = route
    model, tokenizer = load(folder, kind == "remote")
    assert tokenizer.model_max_length == 128 and tokenizer.truncation_side == "left"
    if kind == "decoder":
        batch = tokenizer(tokenizer.apply_chat_template(OVERLONG, tokenize=False), truncation=True, return_tensors="pt")
    else:
        batch = tokenizer(OVERLONG[0]["content"], OVERLONG[1]["content"], truncation="only_first", return_tensors="pt")
    assert batch["input_ids"].shape[1] == 128
    with torch.no_grad():
        assert model(**batch).logits[0, 0].item() == pytest.approx(expected(ckpt, [OVERLONG])[0], abs=ATOL)


def test_pipeline_text_classification(route):
    kind, ckpt, folder = route
    if kind == "remote":
        with pytest.raises(ValueError, match="trust_remote_code"):
            pipeline("text-classification", model=str(folder))
    scorer = pipeline("text-classification", model=str(folder), trust_remote_code=kind == "remote")
    texts = [scorer.tokenizer.apply_chat_template(chat, tokenize=False) for chat in CHATS + [OVERLONG]]
    # function_to_apply="none": the raw reward (a one-label model otherwise gets a sigmoid).
    scored = [scorer(text, function_to_apply="none", truncation=True)[0]["score"] for text in texts]
    want = expected(ckpt, CHATS + [OVERLONG])
    if kind != "decoder":  # an encoder's over-long input needs a text pair (truncation="only_first")
        scored, want = scored[:-1], want[:-1]
        pair = scorer({"text": OVERLONG[0]["content"], "text_pair": OVERLONG[1]["content"]}, function_to_apply="none",
                      truncation="only_first")
        assert pair["score"] == pytest.approx(expected(ckpt, [OVERLONG])[0], abs=ATOL)
    assert scored == pytest.approx(want, abs=ATOL)


def test_trl_grpo_reward_step(route):
    """TRL 1.16 GRPOTrainer with reward_funcs=<folder>: its __init__ loads the model and tokenizer and
    _calculate_rewards scores conversational completions; these are its calls, in its order."""
    kind, ckpt, folder = route
    # GRPOTrainer.__init__ with reward_funcs=[<folder>] and args.trust_remote_code
    model, tokenizer = load(folder, kind == "remote", num_labels=1)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.get_text_config().pad_token_id = tokenizer.pad_token_id
    prompts, completions = [c[:-1] for c in CHATS], [c[-1:] for c in CHATS]
    texts = [apply_chat_template({"messages": p + c}, tokenizer)["text"] for p, c in zip(prompts, completions)]
    inputs = tokenizer(text=texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    with torch.inference_mode():
        rewards = model(**inputs).logits[:, 0]
    assert rewards.tolist() == pytest.approx(expected(ckpt, CHATS), abs=ATOL)


def test_generated_ids_ending_at_eos_get_the_reward_rmlab_trained(tmp_path_factory):
    """A PPO-style consumer scores the policy's own ids: the prompt with the generation prompt, then
    the sampled response ending at eos (<|im_end|>), right-padded with the folder's pad token."""
    ckpt, folder = trained_checkpoint("smollm2", tmp_path_factory), exported_folder("smollm2", tmp_path_factory)
    model, tokenizer = load(folder, False)
    rows = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        prompt_ids = tokenizer(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True),
                               add_special_tokens=False)["input_ids"]
        rows.append(prompt_ids + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    with torch.no_grad():
        rewards = model(**batch).logits[:, 0]
    assert rewards.tolist() == pytest.approx(expected(ckpt, CHATS), abs=ATOL)
    assert tokenizer.eos_token == "<|im_end|>" and all(row[-1] == 2 for row in rows)


OLD_SCRIPT = r"""
import json, sys, torch, transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
exports, chats = json.loads(sys.argv[1]), json.loads(sys.argv[2])
results = {}
for folder, remote in exports:
    out = results[folder] = {"version": transformers.__version__}
    try:
        AutoModelForSequenceClassification.from_pretrained(folder)
        out["without_trust"] = "loaded"
    except ValueError as err:
        out["without_trust"] = "refused: " + str(err)[:200]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote)
    texts = [tokenizer.apply_chat_template(chat, tokenize=False) for chat in chats]
    with torch.no_grad():
        out["rewards"] = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits[:, 0].tolist()
    scorer = pipeline("text-classification", model=model, tokenizer=tokenizer)
    out["pipeline"] = [scorer(t, function_to_apply="none")[0]["score"] for t in texts]
print("RESULT", json.dumps(results))  # after the line transformers' trust_remote_code prompt leaves unfinished
"""


def old_transformers(version: str) -> Path:
    """That transformers (with the tokenizers and hub it needs) installed once, to run beside this
    venv's torch, under rmlab's cache (CI: .ci-cache); pip needs the package index the first time."""
    target = cache_root() / f"transformers-{version}"
    if not (target / "transformers").is_dir():
        partial = target.with_name(target.name + f".partial{os.getpid()}")
        pins = [f"transformers=={version}", OLD_TRANSFORMERS[version], "huggingface-hub<1.0"]
        # --no-compile: byte-compiling all of transformers is most of the install (6.5 s -> 1.8 s); the one process
        # per version that imports it compiles only what it imports.
        result = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                                 str(partial), *pins],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            pytest.skip(f"cannot install {pins} (no package index?): {result.stderr[-500:]}")
        partial.rename(target)
    return target


_old_results: dict = {}  # version -> export folder -> what OLD_SCRIPT read there (one process per version)


def read_with_older_transformers(version: str, tmp_path_factory) -> dict:
    """OLD_SCRIPT's results for every route's export, all read in one process of that transformers version."""
    if version not in _old_results:
        exports = [(str(exported_folder(name, tmp_path_factory)), kind == "remote") for kind, name in ROUTES.items()]
        env = {**os.environ, "PYTHONPATH": str(old_transformers(version))}
        result = subprocess.run([sys.executable, "-c", OLD_SCRIPT, json.dumps(exports), json.dumps(CHATS)], env=env,
                                capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr[-3000:]
        _old_results[version] = json.loads(result.stdout.rpartition("RESULT ")[2])
    return _old_results[version]


@pytest.mark.parametrize("version", list(OLD_TRANSFORMERS))
def test_older_transformers(route, version, tmp_path_factory):
    kind, ckpt, folder = route
    out = read_with_older_transformers(version, tmp_path_factory)[str(folder)]
    assert out["version"] == version
    assert out["without_trust"].startswith("refused") if kind == "remote" else out["without_trust"] == "loaded"
    want = expected(ckpt, CHATS)
    assert out["rewards"] == pytest.approx(want, abs=ATOL) and out["pipeline"] == pytest.approx(want, abs=ATOL)
