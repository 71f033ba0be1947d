"""Checks before a training run spends time building anything: every required value is set, every
config key binds to its constructor, the data files exist, a hub backbone can be had, the devices
exist, no checkpoint is saved weights-only, the pooling suits the backbone, the run can write its
outputs and the disk holds its checkpoints; and before an export loads its checkpoint's weights,
that the pooling can be exported. Each failure is a ConfigError or DataError that says what to do."""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from rmlab.config import config_nodes
from rmlab.errors import ConfigError, DataError
from rmlab.hub import is_causal_decoder, load_config
from rmlab.launch import check_required
from rmlab.model.backbone import apply_lora, load_backbone
from rmlab.model.pooling import POOLINGS, ClsPooling

# Dicts without a _target_ that RewardModel unpacks into a function call: their keys bind there.
BOUND_WITHOUT_TARGET: dict[str, Callable] = {"model.backbone": load_backbone, "model.lora": apply_lora}


log = logging.getLogger(__name__)

# Fewer evaluation pairs than this get a warning: val/acc then moves in steps of 1/n, and its standard
# error at 0.5 is 0.5/sqrt(n) (0.09 at 30 pairs).
MIN_EVAL_PAIRS = 30


def check_config(cfg: DictConfig, run_dir: Path) -> None:
    """Everything that can be checked from the config alone, before the data or the model is built."""
    check_required(cfg)
    check_keys(cfg)
    check_data_files(cfg.data)
    check_backbone_source(cfg.model.backbone)
    check_devices(cfg.trainer)
    check_checkpoints(cfg.get("callbacks"))
    check_pooling(cfg.model)
    check_writable(output_dirs(cfg, run_dir))


def check_data_files(data: DictConfig) -> None:
    """data.path, data.val_path and data.test_path name existing files (before the model loads and W&B starts)."""
    for key in ("path", "val_path", "test_path"):
        path = data.get(key)
        if path is None or "://" in str(path):
            continue
        file = Path(str(path)).expanduser()
        if not file.is_file():
            raise DataError(f"data.{key}={str(path)!r}: no such file ({file.resolve()}). A relative path is read from "
                            f"the directory you run in ({Path.cwd()}).")


def check_backbone_source(backbone: Mapping) -> None:
    """A hub id in model.backbone.name_or_path is either in the local Hugging Face cache or on a hub
    that answers; else a ConfigError at once, instead of transformers' retries (about a minute) and
    a bare hub error. Local dirs and `pkg:` paths are left to the loader."""
    if backbone.get("random_init"):  # model.backbone.random_init: maybe nothing of name_or_path is read
        given = backbone.get("random_init_from") or {}
        if given.get("tokenizer"):
            check_backbone_source(given["tokenizer"])
        if given.get("config") and given.get("tokenizer"):
            return
    name = str(backbone["name_or_path"])
    if name.startswith("pkg:") or Path(name).expanduser().exists() or name.count("/") > 1 or name.startswith((".", "/", "~")):
        return
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    where = (f"model.backbone.name_or_path={name!r} is not a local folder, and as a Hugging Face hub id it is not in the "
             f"local cache ({constants.HF_HUB_CACHE})")
    revision = backbone.get("revision")
    try:
        if isinstance(try_to_load_from_cache(name, backbone.get("gguf_file") or "config.json", revision=revision), str):
            return
    except HFValidationError as error:
        raise ConfigError(f"model.backbone.name_or_path={name!r} is neither a local folder nor a hub id ({error}). "
                          "Check the path.") from error
    advice = (f"Download it where there is network (`hf download {name}`) and copy the cache here, point "
              "model.backbone.name_or_path at a local folder, or use a model that ships as a package: model=minilm or "
              "model=smollm2_135m.")
    offline = any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{where}, and HF_HUB_OFFLINE is set, so it cannot be downloaded. {advice}")
    try:
        HfApi().model_info(name, revision=revision, timeout=10)
    except GatedRepoError:
        return  # the hub answered: from_pretrained says what it needs (a login, accepting the terms)
    except RepositoryNotFoundError as error:
        raise ConfigError(f"{where}, and the hub has no such model (or it is private: log in with `hf auth login`). "
                          "Check the spelling.") from error
    except Exception as error:  # no network, DNS, proxy, timeout: what from_pretrained would retry for a minute
        raise ConfigError(f"{where}, and the hub cannot be reached ({type(error).__name__}: {error}). {advice}") from error


def check_split_sizes(stats: Mapping[str, Mapping[str, int]]) -> None:
    """Warn about a validation or test split too small to rank checkpoints or report on."""
    for split in ("val", "test"):
        n = stats.get(split, {}).get("pairs")
        if n is not None and 0 < n < MIN_EVAL_PAIRS:
            log.warning("the %s split has only %d pairs: %s/acc moves in steps of %.2f and its standard error is about "
                        "%.2f, so %s. Give it more pairs (data.%s_fraction, data.%s_path).", split, n, split, 1 / n,
                        0.5 / math.sqrt(n), "the best checkpoint is picked on noise" if split == "val" else
                        "the test numbers are noise", split, split)


def check_export(ckpt: str, remote_code: bool) -> None:
    """Before rmlab.export loads the weights: a pooling that transformers has no head for (mean, cls)
    needs remote_code=true. Reads only the config stored in the checkpoint (memory-mapped, nothing
    built); the export's own check after loading still covers the rest (e.g. last pooling on an encoder)."""
    file = Path(ckpt).expanduser()
    if remote_code or not file.is_file():
        return  # a missing file: load_checkpoint says so
    stored = torch.load(file, map_location="cpu", weights_only=True, mmap=True).get("rmlab_config") or {}
    target = str(((stored.get("model") or {}).get("pooling") or {}).get("_target_", ""))
    pooling = POOLINGS.get(target)
    if pooling not in ("mean", "cls"):
        return
    backbone = dict(stored["model"]["backbone"], trust_remote_code=False)  # its config only; no code of its own runs
    config = load_config(backbone)
    raise ConfigError(no_native_message(type(config).__name__ if config is not None else backbone["name_or_path"], pooling))


def no_native_message(name: str, pooling: str) -> str:
    """Why a checkpoint of this pooling on this backbone config (class name) needs remote_code=true, and
    how to export it anyway (rmlab.export, and check_export before it loads anything)."""
    why = {
        "mean": "transformers has no sequence-classification head that mean-pools",
        "cls": "transformers' [CLS] heads add a tanh pooler layer (BertForSequenceClassification) and its decoder heads read the last token",
        "last": f"transformers' head for {name} is not the generic decoder head (GenericForSequenceClassification) that the "
                "export maps rmlab's last-token reward onto",
    }[pooling]
    return (f"pooling={pooling} on {name}: {why}, so a plain transformers export would change the rewards. "
            "Set remote_code=true to write a small modeling file into the folder (loaded with "
            "AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)), or train with pooling=last "
            "on a decoder or pooling=pooler on a BERT encoder, which export as transformers' own classes.")


def check_keys(cfg: DictConfig) -> None:
    """Every key of a node with a `_target_` is a parameter of that target (unless it takes **kwargs)."""
    problems = []
    for path, node, target in _bound_nodes(cfg):
        params = inspect.signature(target).parameters
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        names = [name for name, p in params.items() if p.kind != p.VAR_POSITIONAL]
        for key in node:
            if str(key).startswith("_") or key in names:
                continue
            problems.append(f"unknown option {path}.{key}: {_name(target)} takes no {key!r}. " + _suggest(path, key, names, node))
    if problems:
        raise ConfigError("\n".join(problems))


def _bound_nodes(cfg: DictConfig) -> Iterator[tuple[str, DictConfig, Callable]]:
    """(path, node, callable it binds to) for every node with a _target_, and the BOUND_WITHOUT_TARGET dicts."""
    for path, node in config_nodes(cfg):
        if "_target_" in node:
            try:
                yield path, node, get_object(str(node._target_))
            except Exception as error:
                raise ConfigError(f"{path}._target_={node._target_!r} cannot be imported ({error}); check its spelling "
                                  "or install the package that provides it") from error
        elif path in BOUND_WITHOUT_TARGET:
            yield path, node, BOUND_WITHOUT_TARGET[path]


def _suggest(path: str, key: str, names: list[str], node: DictConfig) -> str:
    """'Did you mean ...?' from the node's own parameters, else from the keys one level down
    (`model.lrr` -> `model.optimizer.lr`); the parameter list when nothing is close."""
    candidates = {name: f"{path}.{name}" for name in names}
    for child in node:
        value = node._get_node(child)
        if isinstance(value, DictConfig) and not value._is_none() and not value._is_interpolation():
            for name in value:
                if not str(name).startswith("_"):
                    candidates.setdefault(str(name), f"{path}.{child}.{name}")
    close = difflib.get_close_matches(key, list(candidates), n=1)
    if close:
        return f"Did you mean {candidates[close[0]]}?"
    return f"Options of {path}: {', '.join(names)}."


def _name(target: Callable) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def check_devices(trainer: DictConfig) -> None:
    """trainer.devices asks for no more GPUs than there are, or on CPU (where Lightning starts one
    process per device) no more processes than there are cores."""
    devices, accelerator = trainer.get("devices", "auto"), str(trainer.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.device_count() == 0:
        raise ConfigError(f"trainer.accelerator={accelerator} but this machine has no GPU that torch can use. "
                          "Use trainer.accelerator=cpu (or auto).")
    ids = list(devices) if isinstance(devices, ListConfig) else str(devices).split(",") if "," in str(devices) else None
    if (ids is None and not str(devices).isdigit()) or (not on_gpu and accelerator not in ("cpu", "auto")):
        return  # auto, -1 (all); tpu, mps, ...: Lightning checks those itself
    if on_gpu:
        have = torch.cuda.device_count()
        missing = [int(i) for i in ids if str(i).strip() and int(i) >= have] if ids is not None else []
        if missing:
            raise ConfigError(f"trainer.devices={devices}: GPU id(s) {missing} do not exist; this machine has "
                              f"{have} GPU(s) (ids 0..{have - 1}). Use ids below {have}, or trainer.devices=auto.")
        if ids is None and int(devices) > have:
            raise ConfigError(f"trainer.devices={devices} but this machine has {have} GPU(s). Use trainer.devices={have} "
                              "or fewer, or trainer.devices=auto (all of them).")
    elif ids is None and int(devices) > (os.cpu_count() or 1):
        raise ConfigError(f"trainer.devices={devices} on CPU starts {devices} training processes, but this machine has "
                          f"{os.cpu_count()} CPU cores. Use trainer.devices=1 (one process uses every core), or at most "
                          f"trainer.devices={os.cpu_count()}.")


def check_checkpoints(callbacks: DictConfig | None) -> None:
    """No checkpoint callback saves weights only: Lightning then skips every callback's on_save_checkpoint,
    so the run config that rmlab.checkpoint.RunRecord writes is missing and evaluate, export and score
    refuse the file. (KeepAfterFit already drops the optimizer state of the best checkpoints after fit.)"""
    for name, callback in (callbacks or {}).items():
        if callback is not None and callback.get("save_weights_only"):
            raise ConfigError(f"callbacks.{name}.save_weights_only=true: Lightning writes such checkpoints without "
                              "rmlab's run config, so rmlab.evaluate, rmlab.export and rmlab.score could not read them. "
                              "Leave it false: once training ends, the best checkpoints lose their optimizer state "
                              "(callbacks.keep_after_fit), about a third of the size.")


def check_pooling(model: DictConfig) -> None:
    """pooling=cls reads the first token: on a causal decoder that token has seen nothing after itself."""
    pooling = model.get("pooling")
    if not pooling or not _is_subclass(get_object(str(pooling._target_)), ClsPooling):
        return
    backbone = model.backbone
    config = load_config(backbone)
    if config is None:
        return
    if is_causal_decoder(config):
        raise ConfigError(f"pooling=cls on {backbone.name_or_path} ({config.model_type}, a causal decoder): its first token "
                          "attends to nothing after itself, so it never sees the response and every sequence gets nearly "
                          "the same reward. Use pooling=last (the last real token has read everything) or pooling=mean.")


def _is_subclass(obj: object, cls: type) -> bool:
    return isinstance(obj, type) and issubclass(obj, cls)


def output_dirs(cfg: DictConfig, run_dir: Path) -> list[tuple[Path, str]]:
    """The directories a run writes into, each with the option that moves it."""
    dirs = [(run_dir, "hydra.run.dir")]
    for name, callback in (cfg.get("callbacks") or {}).items():
        if callback is not None and callback.get("dirpath"):
            dirs.append((Path(callback.dirpath), f"callbacks.{name}.dirpath"))
    if cfg.get("logger") and cfg.logger.get("save_dir"):
        dirs.append((Path(cfg.logger.save_dir), "logger.save_dir"))
    return dirs


def check_writable(dirs: list[tuple[Path, str]]) -> None:
    """Create each directory and a file in it: a read-only or full disk fails now, not at the first checkpoint."""
    for directory, option in dirs:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory, prefix=".rmlab-write-check-") as probe:
                probe.write(b"x")
                probe.flush()
        except OSError as error:
            raise ConfigError(f"cannot write to {directory} ({error.strerror or error}). Choose a writable directory "
                              f"with {option}=<dir>.") from error


def checkpoint_bytes(model: torch.nn.Module) -> int:
    """Size of one training checkpoint of this model: its state_dict, plus AdamW's two moment tensors
    (exp_avg, exp_avg_sq, each the size of the weight) for every trainable weight."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    moments = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return weights + moments


def checkpoints_per_dir(cfg: DictConfig) -> dict[Path, int]:
    """How many checkpoint files each directory holds at once, plus one: a new file is written before
    the one it replaces is removed. save_top_k=-1 (keep all) counts once, so the estimate is a floor."""
    counts: dict[Path, int] = {}
    for callback in (cfg.get("callbacks") or {}).values():
        if callback is None or not str(callback.get("_target_", "")).endswith("ModelCheckpoint") or not callback.get("dirpath"):
            continue
        kept = max(int(callback.get("save_top_k", 1)), 1) + bool(callback.get("save_last"))
        counts[Path(callback.dirpath)] = counts.get(Path(callback.dirpath), 1) + kept
    return counts


def check_disk_space(cfg: DictConfig, model: torch.nn.Module) -> None:
    """The checkpoint directories' disks hold the checkpoints the run keeps (from the model's size)."""
    one = checkpoint_bytes(model)
    for directory, count in checkpoints_per_dir(cfg).items():
        check_free_space(directory, count * one, f"{count} checkpoints of {_size(one)}")


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Refuse to start when the disk under `directory` has less than `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise ConfigError(f"not enough disk space in {directory}: the run needs about {_size(needed)} ({what}), "
                          f"{_size(free)} is free. Free some space, write elsewhere (hydra.run.dir=<dir> or "
                          "callbacks.model_checkpoint.dirpath=<dir>), or keep fewer checkpoints "
                          "(callbacks.model_checkpoint.save_top_k=1).")


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB ({n} bytes)"
