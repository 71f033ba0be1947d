"""Load a Hugging Face base model (no LM head), and wrap it with LoRA adapters.

Where the weights come from (hub id, local dir, `pkg:` package, GGUF) and the tokenizer and config
are read by rmlab.hub.

`random_init=true` builds the architecture with random weights and reads no checkpoint: for speed
and memory checks of a model whose weights are not at hand (offline). The config then comes from
`random_init_from.config` (the values of the model's config.json, shipped in its conf/model/*.yaml)
or else from name_or_path, and the tokenizer from `random_init_from.tokenizer` (another backbone's
{name_or_path, gguf_file}) or else from name_or_path.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from transformers import AutoModel, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from rmlab.errors import ConfigError
from rmlab.hub import load_tokenizer, local_source, read_config

log = logging.getLogger(__name__)


def load_backbone(
    name_or_path: str,
    gguf_file: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    gradient_checkpointing: bool = False,
    pad_token: str | None = None,
    random_init: bool = False,
    random_init_from: Mapping | None = None,
    keep_pooler: bool = False,
) -> PreTrainedModel:
    """The base transformer (AutoModel: hidden states out, no vocabulary projection). `pad_token` is
    read by load_tokenizer (both take model.backbone); pad positions never reach a reward.

    random_init: the architecture with random weights (the module docstring says where its config
    and tokenizer come from). Raises ConfigError if that tokenizer has ids past the embedding table.
    keep_pooler: leave a BERT-style pooler in place (pooling=pooler takes it over).
    """
    kwargs = {"trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if random_init:
        backbone = {"name_or_path": name_or_path, "gguf_file": gguf_file, "trust_remote_code": trust_remote_code,
                    "revision": revision, "random_init": True, "random_init_from": random_init_from}
        config = read_config(backbone)
        if (random_init_from or {}).get("tokenizer"):
            _check_vocabulary_fits(config, load_tokenizer(**backbone))
        model = AutoModel.from_config(config, **kwargs)
    else:
        model = AutoModel.from_pretrained(local_source(name_or_path, gguf_file), revision=revision, **kwargs)
    if getattr(model, "pooler", None) is not None and not keep_pooler:
        # BERT-style poolers are never read (rmlab pools hidden states itself); left in place
        # they cost compute and leave DDP with parameters that get no gradient.
        model.pooler = None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _check_vocabulary_fits(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase) -> None:
    """A token id past the embedding table fails inside the forward (on CUDA as a device-side assert)."""
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"model.backbone.random_init_from: the tokenizer has {len(tokenizer)} tokens but the config's "
                          f"vocab_size is {config.vocab_size}; set model.backbone.random_init_from.config.vocab_size="
                          f"{len(tokenizer)} (or more)")


def apply_lora(model: PreTrainedModel, r: int = 0, alpha: float = 32.0, dropout: float = 0.0,
               target_modules: str | list[str] = "all-linear") -> PreTrainedModel:
    """Freeze the backbone and train LoRA adapters instead, through `peft`: each adapted weight computes
    W0 x + (alpha / r) B A x with A [r, in], B [out, r] (Hu et al. 2021, "LoRA", arXiv 2106.09685, Eq. 3).
    r=0 leaves the model untouched. The reward head lives outside the backbone and stays fully trained."""
    if r <= 0:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("model.lora.r > 0 needs peft: pip install 'rmlab[lora]' (or pip install peft)") from None
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(model, config)
