"""`python -m rmlab.score`: rewards of every row of a file from an export or a checkpoint (the same
rewards), pairs in every training format, every input row and field kept, errors that name the line."""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_export import (
    ATOL,
    exported_folder,
    reward_model,
    rmlab_rewards,
    trained_checkpoint,
)

from rmlab.config import CONFIG_DIR
from rmlab.evaluate import data_config
from rmlab.score import score

from conftest import run_cli

LONG_PROMPT = "Please read all of this carefully before you answer. " * 40  # far over max_length=128
ROWS = [
    {"id": 1, "prompt": "What is 7 + 5?", "response": "12", "meta": {"source": "a", "tags": [1, 2]}},
    {"id": 2, "prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                         {"role": "user", "content": "Sort 3, 1, 2."}], "response": "1, 2, 3", "note": None},
    {"id": 3, "prompt": LONG_PROMPT, "response": "Understood: the answer is 4."},
    {"id": 4, "prompt": "Say hello.", "response": "Hello there! How can I help you today?"},
]
PAIRS = [
    {"prompt": "What is 7 + 5?", "chosen": "12", "rejected": "13", "subset": "math"},
    {"prompt": "Say hello to Ann.", "chosen": "Hello, Ann!", "rejected": "No.", "subset": "chat"},
    {"prompt": LONG_PROMPT, "chosen": "Understood.", "rejected": "I did not read it.", "subset": "long"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle]


def run_score(overrides: list[str]) -> dict:
    """score() on the config `python -m rmlab.score <overrides>` composes."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return score(compose("score", overrides=overrides))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint("smollm2", tmp_path_factory), exported_folder("smollm2", tmp_path_factory)


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> tuple[Path, Path]:
    return trained_checkpoint("minilm", tmp_path_factory), exported_folder("minilm", tmp_path_factory)


@pytest.mark.e2e
def test_export_and_checkpoint_score_every_row_alike(smollm2, tmp_path):
    ckpt, folder = smollm2
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    summaries, outputs = {}, {}
    for name, model_path in (("export", folder), ("ckpt", ckpt)):
        out = tmp_path / f"{name}.jsonl"
        summaries[name] = run_score([f"model_path={model_path}", f"data.path={rows}", f"out={out}", "batch_size=3"])
        outputs[name] = read_jsonl(out)
    for name, scored in outputs.items():
        assert [list(r) for r in scored] == [[*row, "reward"] for row in ROWS], name  # every field, in order
        assert [{k: v for k, v in r.items() if k != "reward"} for r in scored] == ROWS, name
        assert summaries[name] == {"rows": 4, "sequences": 4, "format": "single", "truncated_prompt": 1,
                                   "truncated_response": 0, "precision": "fp32", "out": str(tmp_path / f"{name}.jsonl"),
                                   "unknown_responses": 0, "unrendered_tool_calls": 0, "reply_fields_dropped": 0}
    expected = rmlab_rewards(ckpt, [[{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]
                                    for r in ROWS], [r["response"] for r in ROWS])
    assert [r["reward"] for r in outputs["export"]] == pytest.approx(expected.tolist(), abs=ATOL)
    assert [r["reward"] for r in outputs["ckpt"]] == pytest.approx(expected.tolist(), abs=ATOL)


@pytest.mark.e2e
def test_pairs_get_the_rewards_evaluation_computes(minilm, tmp_path):
    ckpt, folder = minilm
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "scored.jsonl.gz"
    result = run_cli("rmlab.score", [f"model_path={folder}",  # native: no remote code
                                     f"data.path={pairs}", f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scoring: 100%" in result.stderr  # the progress bar
    assert ("1 rows longer than max_length=128, truncated as in training (kept): prompt cut from the left in 1 "
            "(first: line 3), response cut at its end in 0 (first: -)") in result.stdout
    scored = read_jsonl(out)
    assert [{k: r[k] for k in PAIRS[0]} for r in scored] == PAIRS
    assert all(r["reward_margin"] == r["reward_chosen"] - r["reward_rejected"] for r in scored)

    # rmlab.evaluate's path: the checkpoint's data config on this file, its test loader, RewardModel.
    model, run_cfg = reward_model(ckpt)
    datamodule = instantiate(data_config(run_cfg, OmegaConf.create({"path": str(pairs)}), "test")[0])
    datamodule.setup("test")
    with torch.no_grad():  # (the loader gives the longest pairs first: back to file order by index)
        batches = [(b["index"], model(b["input_ids"], b["attention_mask"]).view(2, -1).T) for b in datamodule.test_dataloader()]
    rewards = torch.cat([r for _, r in batches])[torch.argsort(torch.cat([i for i, _ in batches]))]
    assert datamodule.stats["test"]["truncated_prompt"] == 1
    assert [r[k] for r in scored for k in ("reward_chosen", "reward_rejected")] == pytest.approx(rewards.flatten().tolist(), abs=ATOL)


@pytest.mark.e2e
def test_a_pairs_file_with_a_margin_column_is_scored_and_keeps_it(minilm, tmp_path):
    """The data's label margin (`margin`) and the reward difference (`reward_margin`) are two fields."""
    ckpt, folder = minilm
    rows = [{**pair, "margin": float(i)} for i, pair in enumerate(PAIRS)]
    out = tmp_path / "scored.jsonl"
    run_score([f"model_path={folder}", f"data.path={write_jsonl(tmp_path / 'pairs.jsonl', rows)}", f"out={out}"])
    scored = read_jsonl(out)
    assert [{k: r[k] for k in rows[0]} for r in scored] == rows
    assert all(r["reward_margin"] == r["reward_chosen"] - r["reward_rejected"] for r in scored)


@pytest.mark.e2e
def test_every_pair_format_and_file_type_gives_the_same_rewards(minilm, tmp_path):
    ckpt, _ = minilm
    hh = [{"chosen": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['chosen']}",
           "rejected": f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['rejected']}", "id": i} for i, p in enumerate(PAIRS[:2])]
    chat = [{"chosen": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["rejected"]}]}
            for p in PAIRS[:2]]
    pd.DataFrame(PAIRS[:2]).to_parquet(tmp_path / "pairs.parquet")
    pd.DataFrame(PAIRS[:2]).to_csv(tmp_path / "pairs.csv.gz", index=False)
    (tmp_path / "chat.json").write_text(json.dumps(chat))  # a JSON array
    files = {"prompt_response": write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:2]), "hh": write_jsonl(tmp_path / "hh.jsonl.gz", hh),
             "chat": tmp_path / "chat.json", "parquet": tmp_path / "pairs.parquet", "csv": tmp_path / "pairs.csv.gz"}
    scored = {}
    for name, path in files.items():
        out = tmp_path / f"{name}.out.jsonl"
        summary = run_score([f"model_path={ckpt}", f"data.path={path}", f"out={out}"])
        assert summary["format"] == {"hh": "hh", "chat": "chat"}.get(name, "prompt_response")
        scored[name] = read_jsonl(out)
    assert [{k: r[k] for k in hh[0]} for r in scored["hh"]] == hh and [r["chosen"] for r in scored["chat"]] == [c["chosen"] for c in chat]
    rewards = {name: [r[k] for r in rows for k in ("reward_chosen", "reward_rejected")] for name, rows in scored.items()}
    for name in rewards:
        assert rewards[name] == pytest.approx(rewards["prompt_response"], abs=ATOL), name


@pytest.mark.e2e
def test_bf16_scoring_stays_close_to_fp32(minilm, tmp_path):
    ckpt, _ = minilm
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    rewards = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.jsonl"
        run_score([f"model_path={ckpt}", f"data.path={rows}", f"out={out}", f"precision={precision}"])
        rewards[precision] = [r["reward"] for r in read_jsonl(out)]
    assert rewards["bf16"] == pytest.approx(rewards["fp32"], abs=0.1)
    assert rewards["bf16"] != rewards["fp32"]  # autocast really ran


@pytest.mark.parametrize("content, error", [
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '],
     "rows.jsonl line 3: not valid JSON (Expecting value at column 29)"),
    (['{"prompt": "a", "response": "b"}', "", '{"prompt": "a"}'],
     "rows.jsonl line 3: missing 'prompt' or 'response' (format 'single')"),
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": ["b"]}'],
     "rows.jsonl line 2: column 'response' must be a string, got list (format 'single')"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c"}', '["a", "b"]'],
     "rows.jsonl line 2: expected an object with named fields, got list (format 'prompt_response')"),
    (['{"prompt": "a", "response": "b", "reward": 1.0}'],
     "rows.jsonl line 1: already has a field 'reward', which scoring would overwrite"),
    (['{"prompt": "a", "chosen": "b", "rejected": "c", "margin": 1.0, "reward_margin": 0.5}'],
     "rows.jsonl line 1: already has a field 'reward_margin', which scoring would overwrite"),
])
def test_a_bad_row_stops_with_file_line_and_problem(content, error, tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", content)
    with pytest.raises(ValueError) as raised:
        run_score([f"model_path={tmp_path / 'never-loaded'}", f"data.path={rows}", f"out={tmp_path / 'out.jsonl'}"])
    assert str(raised.value).startswith(f"{rows.parent}/{error}")
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.e2e
def test_remote_code_exports_need_trust_remote_code(tmp_path_factory, tmp_path):
    ckpt, folder = trained_checkpoint("minilm_lora", tmp_path_factory), exported_folder("minilm_lora", tmp_path_factory)
    rows = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(ValueError, match="with the modeling file rmlab.export wrote into it; run with trust_remote_code=true"):
        run_score([f"model_path={folder}", f"data.path={rows}", f"out={tmp_path / 'out.jsonl'}"])
    run_score([f"model_path={folder}", "trust_remote_code=true", f"data.path={rows}", f"out={tmp_path / 'out.jsonl'}"])
    expected = rmlab_rewards(ckpt, [[{"role": "user", "content": r["prompt"]}] if isinstance(r["prompt"], str) else r["prompt"]
                                    for r in ROWS], [r["response"] for r in ROWS])
    assert [r["reward"] for r in read_jsonl(tmp_path / "out.jsonl")] == pytest.approx(expected.tolist(), abs=ATOL)


@pytest.mark.e2e
def test_scoring_counts_what_the_model_cannot_read_and_writes_strict_json(minilm, tmp_path):
    ckpt, _ = minilm
    call = {"type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"tower\"}"}}
    context = [{"role": "user", "content": "How tall is the tower?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "tool", "name": "lookup", "content": "330"}]
    rows = [{"chosen": [*context, {"role": "assistant", "content": "330 m."}],
             "rejected": [*context, {"role": "assistant", "content": "1000 ft \U0001F44D", "tool_calls": [call]}]},
            {"chosen": [*context[:1], {"role": "assistant", "content": "Tall."}],
             "rejected": [*context[:1], {"role": "assistant", "content": "\U0001F44E"}]}]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8-sig")  # with a byte-order mark
    out = tmp_path / "scored.jsonl"
    summary = run_score([f"model_path={ckpt}", f"data.path={path}", f"out={out}"])
    assert {k: summary[k] for k in ("rows", "unknown_responses", "unrendered_tool_calls", "reply_fields_dropped")} == {
        "rows": 2, "unknown_responses": 2, "unrendered_tool_calls": 0, "reply_fields_dropped": 1}
    scored = [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in JSON")) for line in out.read_text().splitlines()]
    assert [r["chosen"] for r in scored] == [r["chosen"] for r in rows]
