"""Checks before a training run spends time building anything: every config key binds to its
constructor, the devices exist, the pooling suits the backbone, the run can write its outputs and
the disk holds its checkpoints. Each failure is a ConfigError that says what to do."""

from __future__ import annotations

import difflib
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig

from rmlab.errors import ConfigError
from rmlab.model.backbone import apply_lora, is_causal_decoder, load_backbone, load_config
from rmlab.model.pooling import ClsPooling

# Dicts without a _target_ that RewardModel unpacks into a function call: their keys bind there.
BOUND_WITHOUT_TARGET: dict[str, Callable] = {"model.backbone": load_backbone, "model.lora": apply_lora}


def check_config(cfg: DictConfig, run_dir: Path) -> None:
    """Everything that can be checked from the config alone, before the data or the model is built."""
    check_keys(cfg)
    check_devices(cfg.trainer)
    check_pooling(cfg.model)
    check_writable(output_dirs(cfg, run_dir))


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


def config_nodes(node, path: str = "") -> Iterator[tuple[str, DictConfig]]:
    """(path, node) for every dict node of a config, depth first, lists included; None, missing
    and interpolated values are not walked (nothing is resolved)."""
    if isinstance(node, ListConfig) and not node._is_none() and not node._is_interpolation():
        for index in range(len(node)):
            yield from config_nodes(node._get_node(index), f"{path}[{index}]")
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing() or node._is_interpolation():
        return
    yield path, node
    for key in node:
        yield from config_nodes(node._get_node(key), f"{path}.{key}".lstrip("."))


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
