"""Every option of every config group composes, its keys bind to its constructor, and the cheap
parts instantiate."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from rmlab.config import CONFIG_DIR
from rmlab.preflight import check_keys, config_nodes

from conftest import compose_train

GROUPS = {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in Path(CONFIG_DIR).iterdir() if g.is_dir()}
OPTIONS = [(group, option) for group, options in sorted(GROUPS.items()) for option in options]
REQUIRED = {("data", "local"): ["data.path=pairs.jsonl"]}
PLUGIN_GROUPS = {"hparams_search": "hydra_plugins.hydra_optuna_sweeper"}  # not in the defaults list: +group=option


def test_every_group_has_options():
    assert {"model", "pooling", "data", "trainer", "logger", "callbacks", "experiment"} <= set(GROUPS)
    assert GROUPS["pooling"] == ["cls", "last", "mean", "pooler"]
    assert {"minilm", "smollm2_135m"} <= set(GROUPS["model"])


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_binds(group, option, tmp_path):
    if group in PLUGIN_GROUPS:
        pytest.importorskip(PLUGIN_GROUPS[group])
    prefix = "+" if group in PLUGIN_GROUPS else ""
    cfg = compose_train([f"{prefix}{group}={option}", *REQUIRED.get((group, option), [])], tmp_path)
    packaged_at = {"pooling": "model.pooling", "experiment": "model.pooling", "hparams_search": "model.pooling",
                   "debias": "model.pooling", "set_loss": "model.set_loss", "ensemble": "model.ensemble"}  # groups whose files are packaged elsewhere
    assert OmegaConf.select(cfg, packaged_at.get(group, group)) is not None
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    targets = {path for path, node in config_nodes(resolved) if "_target_" in node}
    assert {"model", "model.pooling", "model.loss", "data", "trainer"} <= targets
    assert (cfg.data.source is None) == ("path" in cfg.data)  # a source, or local files
    check_keys(resolved)  # every key binds to its constructor (rmlab.preflight, as train() checks it)

    # Cheap parts instantiate for real.
    pooling = instantiate(cfg.model.pooling)
    if hasattr(pooling, "adopt"):  # pooling=pooler: RewardModel hands it the backbone's pooler
        pooling.adopt(torch.nn.ModuleDict({"dense": torch.nn.Linear(4, 4)}), "a 4-wide backbone")
    hidden, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pooling(hidden, mask).shape == (2, 4)
    loss = instantiate(cfg.model.loss)
    assert loss(torch.tensor([1.0]), torch.tensor([0.0])).item() > 0
    set_loss = instantiate(cfg.model.set_loss)  # rewards, scores, mask [B, K]
    assert set_loss(torch.tensor([[1.0, 0.0, 0.5]]), torch.tensor([[2.0, 0.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)).item() > 0
    if cfg.model.get("ensemble") is not None:  # ensemble=heads: k heads and their aggregation
        ensemble = instantiate(cfg.model.ensemble)
        assert ensemble.reward(torch.zeros(2, ensemble.heads)).shape == (2,)
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = instantiate(cfg.model.optimizer)([weight])
    instantiate(cfg.model.scheduler)(optimizer=optimizer, num_warmup_steps=1, num_training_steps=10)
    if cfg.data.source is not None:
        assert callable(instantiate(cfg.data.source))
    for callback in cfg.callbacks.values():
        instantiate(callback)
    assert instantiate(cfg.diagnostics).report_dir == tmp_path
    instantiate(cfg.logger)
    if cfg.trainer.accelerator in ("auto", "cpu"):
        instantiate(cfg.trainer, precision="32-true")


def test_run_dir_paths_follow_hydra_output_dir(tmp_path):
    cfg = compose_train([], tmp_path)
    assert cfg.callbacks.model_checkpoint.dirpath == f"{tmp_path}/checkpoints"
    assert cfg.logger.save_dir == str(tmp_path)
    assert cfg.logger.offline is True
    assert cfg.data.tokenizer == cfg.model.backbone


def test_typo_in_group_option_lists_the_choices(tmp_path):
    with pytest.raises(Exception, match=r"(?s)Could not find 'pooling/maen'.*Available options.*cls.*last.*mean"):
        compose_train(["pooling=maen"], tmp_path)


def _compose_evaluate(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("evaluate", overrides=overrides)


@pytest.mark.parametrize("data", GROUPS["data"])
def test_evaluate_data_options_merge_onto_the_checkpoints_config(data, tmp_path):
    from rmlab.evaluate import data_config

    run_cfg = OmegaConf.create(OmegaConf.to_container(compose_train(["model=smollm2_135m"], tmp_path), resolve=True))
    overrides = [f"data={data}"] + (["data.path=pairs.jsonl"] if data == "local" else [])
    cfg = _compose_evaluate(["ckpt=x.ckpt", *overrides])
    merged, split = data_config(run_cfg, cfg.data, "val")
    assert merged["tokenizer"] == run_cfg.model.backbone  # the checkpoint's tokenizer, whatever the data
    if data == "local":  # a file is evaluated whole
        assert (merged["source"], merged["path"], merged["test_path"], split) == (None, None, "pairs.jsonl", "test")
        assert merged["max_length"] == run_cfg.data.max_length
    else:
        assert merged["source"]["_target_"] == cfg.data.source._target_ and split == "val"
    check_keys(OmegaConf.create({"data": merged}))


def test_evaluate_without_data_keeps_the_checkpoints_data(tmp_path):
    from rmlab.evaluate import data_config

    run_cfg = OmegaConf.create(OmegaConf.to_container(compose_train([], tmp_path), resolve=True))
    merged, split = data_config(run_cfg, _compose_evaluate(["ckpt=x.ckpt", "data.eval_batch_size=4"]).data, "test")
    assert merged == {**OmegaConf.to_container(run_cfg.data), "eval_batch_size": 4} and split == "test"
