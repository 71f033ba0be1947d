"""Old checkpoints keep working: one written by rmlab before 0.2 (tests/fixtures/pre_0_2, by a76cb03) loads,
scores, evaluates and exports with the rewards it gave then; checkpoints from before the reward head lost its bias
load (the bias is a constant shift); compatibility is keyed to the version a checkpoint records."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from rmlab.model.pooling import MeanPooling

from conftest import compose_entry, make_reward_model

PRE_0_2 = Path(__file__).parent / "fixtures" / "pre_0_2"


@pytest.fixture
def pre_0_2(tmp_path, monkeypatch) -> dict:
    """The a76cb03 checkpoint in a scratch copy of its folder, the working directory (its backbone path is relative)."""
    folder = tmp_path / "pre_0_2"
    shutil.copytree(PRE_0_2, folder)
    monkeypatch.chdir(folder)
    return {"ckpt": str(folder / "a76cb03.ckpt"), "pairs": str(folder / "pairs.jsonl"),
            **json.loads((folder / "rewards_a76cb03.json").read_text())}


def _scored(path: Path) -> list[list[float]]:
    return [[row["reward_chosen"], row["reward_rejected"]] for row in map(json.loads, path.read_text().splitlines())]


def test_a_pre_0_2_checkpoint_scores_and_exports_with_its_old_rewards(pre_0_2, tmp_path):
    from rmlab.export import export
    from rmlab.score import score

    checkpoint = torch.load(pre_0_2["ckpt"], weights_only=False)
    assert "rmlab_version" not in checkpoint and "label_margin" not in json.dumps(checkpoint["rmlab_config"])
    score(compose_entry("score", [f"model_path={pre_0_2['ckpt']}", f"data.path={pre_0_2['pairs']}",
                                  f"out={tmp_path / 'ckpt.jsonl'}"], tmp_path / "score_ckpt"))
    assert _scored(tmp_path / "ckpt.jsonl") == pre_0_2["checkpoint"]  # bit for bit: the same computation
    export(compose_entry("export", [f"ckpt={pre_0_2['ckpt']}", f"out={tmp_path / 'export'}", "remote_code=true"],
                         tmp_path / "export_run"))
    score(compose_entry("score", [f"model_path={tmp_path / 'export'}", "trust_remote_code=true",
                                  f"data.path={pre_0_2['pairs']}", f"out={tmp_path / 'export.jsonl'}"], tmp_path / "score_export"))
    torch.testing.assert_close(torch.tensor(_scored(tmp_path / "export.jsonl")), torch.tensor(pre_0_2["export"]),
                               atol=1e-6, rtol=0)


@pytest.mark.e2e
def test_a_pre_0_2_checkpoint_evaluates_on_a_pairs_file(pre_0_2, tmp_path):
    from rmlab.evaluate import evaluate

    report = evaluate(compose_entry("evaluate", [f"ckpt={pre_0_2['ckpt']}", "data=local", f"data.path={pre_0_2['pairs']}",
                                                 "logger=csv"], tmp_path / "evaluate"))
    right = [chosen > rejected for chosen, rejected in pre_0_2["checkpoint"]]
    assert report["n"] == 5 and report["overall"]["acc"] == pytest.approx(sum(right) / 5)


def test_a_checkpoint_with_a_head_bias_loads_with_a_warning(backbone_cfg, caplog):
    torch.manual_seed(0)
    trained = make_reward_model(backbone_cfg, MeanPooling())
    old_state = {**trained.state_dict(), "head.bias": torch.tensor([0.7])}
    fresh = make_reward_model(backbone_cfg, MeanPooling())
    with caplog.at_level(logging.WARNING):
        fresh.load_state_dict(old_state)
    assert "reward-head bias (0.7)" in caplog.text
    input_ids, mask = torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(fresh(input_ids, mask), trained(input_ids, mask))


def test_every_checkpoint_records_the_config_and_the_rmlab_version():
    from rmlab import __version__
    from rmlab.checkpoint import RunRecord

    checkpoint = {"state_dict": {}}
    RunRecord({"seed": 3}).on_save_checkpoint(None, None, checkpoint)
    assert checkpoint == {"state_dict": {}, "rmlab_config": {"seed": 3}, "rmlab_version": __version__}


def test_compatibility_is_keyed_to_the_version_a_checkpoint_was_written_by():
    from rmlab.checkpoint import PRE_0_2, written_before, written_by

    assert written_by({}) == PRE_0_2 and written_before({}, "0.2")  # written before versions were stored
    assert written_by({"rmlab_version": "0.2.0"}) == "0.2.0" and not written_before({"rmlab_version": "0.2.0"}, "0.2")
    assert written_before({"rmlab_version": "0.1.9"}, "0.2") and not written_before({"rmlab_version": "0.10.0"}, "0.2")


def test_the_sequence_end_check_reads_the_marker_only_on_pre_0_2_checkpoints():
    import pytest

    from rmlab.trained import check_sequence_end

    check_sequence_end({"rmlab_version": "0.2.0"}, {"chat_template": True}, "new.ckpt")  # 0.2+: always eos
    check_sequence_end({"rmlab_sequence_end": "eos"}, {"chat_template": True}, "pre-0.2-marked.ckpt")
    with pytest.raises(ValueError, match=r"^ckpt='old.ckpt' was trained by an rmlab that read chat-template rewards"):
        check_sequence_end({}, {"chat_template": True}, "old.ckpt")
