"""Where the Hydra configs live (inside the package for wheel installs, at the repo root for editable
ones), and walking a composed config without resolving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, ListConfig

_PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = str(_PACKAGE / "conf") if (_PACKAGE / "conf").is_dir() else str(_PACKAGE.parent / "conf")


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
