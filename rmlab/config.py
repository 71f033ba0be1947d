"""Where the Hydra configs live: inside the package (wheel installs) or at the repo root (editable)."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CONFIG_DIR = str(_PACKAGE / "conf") if (_PACKAGE / "conf").is_dir() else str(_PACKAGE.parent / "conf")
