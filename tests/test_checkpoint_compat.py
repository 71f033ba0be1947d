"""Checkpoints written before the reward head lost its bias still load (the bias is a constant shift)."""

import logging

import torch

from rmlab.model.pooling import MeanPooling

from conftest import make_reward_model


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
