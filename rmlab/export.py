"""Export a trained reward model as a Hugging Face folder: `python -m rmlab.export ckpt=<path.ckpt> out=<dir>`.

The folder gives consumers that know nothing about rmlab (transformers, pipeline, TRL, OpenRLHF,
RewardBench) exactly rmlab's rewards (`logits[:, 0]`), or refuses to load: it never loads as some
other model. The export checks this itself on the checkpoint's validation pairs before it moves the
folder into place: the tokenizer's chat template must give the ids rmlab trained on, and the loaded
folder the rewards rmlab computes.

- Decoder + `pooling=last`: transformers' own `*ForSequenceClassification` class (e.g. Llama).
  It pools the last position whose id is not `config.pad_token_id`: with pad == eos (SmolLM2's
  <|im_end|>) every input, which ends in eos, would be scored one token early. So the folder gets a
  pad token that no input contains (`<|pad|>`, one new embedding row that no real token attends to)
  whenever the pad token doubles as eos/bos/unk or occurs in the validation inputs. It numbers
  positions 0..L-1 whatever the padding (rmlab: from the attention mask); under left padding rotary
  embeddings make the two agree up to rounding.
- BERT encoder + `pooling=pooler`: transformers' `BertForSequenceClassification` (the pooler, then
  the classifier with bias 0). It reads position 0 as [CLS], so the folder pads on the right.
- LoRA checkpoints: the adapters are merged into the backbone weights first (peft's merge_and_unload).
- Any other pooling (mean, cls, last on an encoder) has no transformers class that computes it:
  refused, unless `remote_code=true` writes a small self-contained modeling file (no rmlab import).
  Its config.json then has a model_type transformers does not know, so loading it without
  `trust_remote_code=True` fails instead of building transformers' own class with random weights.

Inputs: the tokenizer gets a chat template that renders exactly what rmlab trained on (decoders: the
model's template, ended at the eos token; encoders: `[CLS] prompt [SEP] response [SEP]`), adds no
special tokens of its own to a single text, truncates from the left at rmlab's max_length, and the
folder gets a README.md model card with the input contract. config.json also gets top-level
`rope_theta` (transformers 4.x reads it there), the reward `mean`/`std` where OpenRLHF reads them,
and an `rmlab` entry: how inputs were tokenized, the pooling, the reward statistics over the
validation split and the measured largest difference from rmlab's rewards.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import hydra
import torch
import transformers
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from rmlab import strict_json
from rmlab.checkpoint import umask_mode
from rmlab.config import CONFIG_DIR
from rmlab.data.collate import PairCollator
from rmlab.data.tokenize import plain_chat_template, special_token_frame
from rmlab.errors import ConfigError
from rmlab.launch import short_user_errors
from rmlab.model.module import RewardModel
from rmlab.model.pooling import POOLINGS
from rmlab.preflight import check_export, no_native_message
from rmlab.trained import check_sequence_end, load_checkpoint, load_reward_model, rmlab_tokenizer, tokenizing_function

log = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
MODELING_FILE = "modeling_rmlab_reward.py"
REMOTE_CLASS = "RmlabRewardModel"
REMOTE_CONFIG = "RmlabRewardConfig"
REMOTE_MODEL_TYPE = "rmlab_reward"  # unknown to transformers: without trust_remote_code, loading fails
NATIVE_POOLER = {"bert": "BertForSequenceClassification"}  # pooling=pooler: backbone model_type -> class
OLDEST_TRANSFORMERS = "4.46.3"  # the oldest transformers rmlab supports; the interop tests load exports with it

# Written into the folder by `remote_code=true`: it must run without rmlab installed, under transformers
# 4.x and 5.x alike.
MODELING_SOURCE = '''\
"""Reward model exported by rmlab (self-contained: torch + transformers only).

backbone -> pooling -> score = Linear(hidden, 1, bias=False); `logits[:, 0]` is the reward. Load with
AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True). Pooling reads the
attention mask (right for any padding side), positions are rebuilt from it as in rmlab, and
token_type_ids are ignored (rmlab trains with segment ids 0): same token ids, same reward as rmlab.
"""

import inspect

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


def pool(hidden, attention_mask, pooling):
    """One vector per row: `last` / `cls` = last / first real token, `mean` = mean over real tokens."""
    mask = attention_mask.bool()
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        return hidden[rows, (mask * positions).argmax(dim=1)]
    if pooling == "cls":
        return hidden[rows, mask.int().argmax(dim=1)]
    if pooling == "mean":
        mask = mask.unsqueeze(-1)
        total = torch.where(mask, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device)).sum(dim=1)
        return total / mask.sum(dim=1).clamp(min=1).to(hidden.dtype)
    raise ValueError(f"unknown pooling {pooling!r}")


class RmlabRewardConfig(PretrainedConfig):
    """The backbone's config (its own model_type kept as `backbone_model_type`) and rmlab's settings.
    Its model_type is unknown to transformers, so the folder cannot load as some other model."""

    model_type = "MODEL_TYPE"

    def backbone_config(self):
        fields = {k: v for k, v in self.to_dict().items()
                  if k not in ("model_type", "backbone_model_type", "auto_map", "architectures", "rmlab")}
        return AutoConfig.for_model(self.backbone_model_type, **fields)


class RmlabRewardModel(PreTrainedModel):
    """A base transformer, rmlab's pooling and a bias-free linear score."""

    config_class = RmlabRewardConfig
    base_model_prefix = "backbone"
    _supports_sdpa = SUPPORTS_SDPA  # the backbone class's value, filled in by rmlab.export

    def __init__(self, config):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config.backbone_config())
        if getattr(self.backbone, "pooler", None) is not None:
            self.backbone.pooler = None  # BERT's tanh pooler was never part of the reward
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        self.pooling = config.rmlab["pooling"]
        self.positions_from_mask = "position_ids" in inspect.signature(self.backbone.forward).parameters
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.positions_from_mask:  # left-padded rows get the positions they have alone
            inputs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        hidden = self.backbone(**inputs).last_hidden_state
        return SequenceClassifierOutput(logits=self.score(pool(hidden, attention_mask, self.pooling)))
'''.replace("MODEL_TYPE", REMOTE_MODEL_TYPE)

MODEL_CARD = """\
# Reward model exported by rmlab

`logits[:, 0]` is the reward. Trained as a Bradley-Terry reward model by rmlab ({pooling} pooling on
{backbone}); this folder gives rmlab's rewards (checked at export: largest difference {max_abs_diff:.2g}
on {checked} validation responses) with plain transformers, {loading}.

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("{folder}"{remote})
tokenizer = AutoTokenizer.from_pretrained("{folder}"{remote})
text = tokenizer.apply_chat_template([{{"role": "user", "content": "What is 7 + 5?"}}, {{"role": "assistant", "content": "12"}}], tokenize=False)
reward = model(**tokenizer(text, return_tensors="pt")).logits[0, 0]
```

## Input contract

- **Text**: the conversation rendered by this tokenizer's chat template, ending with the assistant
  response to score ({rendered}). `add_special_tokens` may be true or false: the tokenizer adds
  nothing to a single text; the template carries every special token.
- **Where the reward is read**: {read_at}.
- **Token ids** without the template: {generated}.
- **Length**: rmlab trained on at most {max_length} tokens (`model_max_length`). Over-long inputs:
  rmlab keeps the response and cuts the prompt from the left; {truncation}.
- **Padding**: {padding}.
- **Normalisation**: over the validation split the rewards have mean {mean:.4g} and std {std:.4g}
  (`mean` / `std` in config.json, where OpenRLHF's `--normalize_reward` reads them).
- **transformers**: written with {written}; rmlab's interop tests load such folders with {oldest}, 4.51.3
  (RewardBench's pin) and {written}.
"""

@torch.no_grad()
def validation_rewards(model: RewardModel, run_cfg: DictConfig, val_path: str | None = None) -> tuple[list[dict], torch.Tensor]:
    """The checkpoint's own validation pairs (or those of the file `val_path`), normalised and
    tokenized, and rmlab's rewards of their responses: all chosen, then all rejected."""
    if val_path:
        run_cfg = OmegaConf.merge(run_cfg, {"data": {"source": None, "path": None, "val_path": val_path, "test_path": None}})
    # The plain path (one padded row per sequence) is the reference an export must reproduce.
    datamodule = instantiate(run_cfg.data, packing="none")
    datamodule.setup("validate")
    index, batches = [], []
    for batch in datamodule.val_dataloader():  # longest pairs first: put back in the split's order by index
        index.append(batch["index"])
        batches.append(model(batch["input_ids"], batch["attention_mask"]))
    order = torch.argsort(torch.cat(index))
    # Each batch is [chosen; rejected]; keep the split's order, chosen before rejected.
    chosen = torch.cat([rewards.chunk(2)[0] for rewards in batches])[order]
    rejected = torch.cat([rewards.chunk(2)[1] for rewards in batches])[order]
    return list(datamodule.splits["val"]), torch.cat([chosen, rejected])


def needs_own_pad_token(tokenizer: PreTrainedTokenizerBase, sequences: list[list[int]]) -> bool:
    """True when the pad id can occur in real inputs: transformers' head would then stop at the last
    id that is not the pad id, which may be before the last real token."""
    pad = tokenizer.pad_token_id
    shared = {tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id} - {None}
    return pad is None or pad in shared or any(pad in ids for ids in sequences)


def native_class(config, pooling: str) -> type | None:
    """transformers' sequence-classification class that computes this reward, or None.

    `last`: the generic decoder head (last non-pad token -> Linear(hidden, 1, bias=False)).
    `pooler`: BertForSequenceClassification (pooler on position 0 -> classifier, bias 0).
    Nothing in transformers mean-pools, and its [CLS] heads add a pooler.
    """
    cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING.get(type(config), None)
    if pooling == "last" and cls is not None and issubclass(cls, GenericForSequenceClassification):
        return cls
    if pooling == "pooler" and cls is not None and cls.__name__ == NATIVE_POOLER.get(config.model_type):
        return cls
    return None


def add_pad_row(model: RewardModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give the tokenizer a new `<|pad|>` token and the backbone its embedding row (the mean row).

    No real token attends to a pad position, so the row's value never reaches a reward.
    """
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    embedding = model.backbone.get_input_embeddings()
    rows = len(tokenizer) - embedding.weight.shape[0]
    if rows > 0:
        mean = embedding.weight.data.mean(dim=0, keepdim=True)
        embedding.weight = torch.nn.Parameter(torch.cat([embedding.weight.data, mean.expand(rows, -1)]))
        embedding.num_embeddings = embedding.weight.shape[0]
        model.backbone.config.vocab_size = embedding.num_embeddings


def ignore_segment_ids(model: RewardModel) -> None:
    """Make every segment (token type) embedding row equal to row 0, the only one rmlab trains with.

    `tokenizer(prompt, response)` gives the response segment id 1, which BERT would add its row 1 for;
    with equal rows the reward no longer depends on them.
    """
    rows = getattr(getattr(model.backbone, "embeddings", None), "token_type_embeddings", None)
    if isinstance(rows, torch.nn.Embedding) and rows.num_embeddings > 1:
        rows.weight.data[1:] = rows.weight.data[:1]


def eos_ended_chat_template(template: str, eos_token: str) -> str:
    """The model's chat template, with a full conversation cut right after its last eos token: the
    ids end where a generated response ends, as rmlab trains (rmlab.data.tokenize.end_at_eos).
    With add_generation_prompt the text is the template's own."""
    eos = json.dumps(eos_token)
    return ("{%- set rendered %}" + template + "{% endset -%}"
            "{%- set end = rendered.rfind(" + eos + ") -%}"
            "{%- if add_generation_prompt or end < 0 -%}{{- rendered -}}"
            "{%- else -%}{{- rendered[:end + " + str(len(eos_token)) + "] -}}{%- endif -%}")


def consumer_tokenizer(tokenizer: PreTrainedTokenizerBase, settings: dict) -> None:
    """Make the tokenizer give consumers rmlab's inputs by the standard route (see the module docstring)."""
    frame = special_token_frame(tokenizer)
    if settings["chat_template"]:
        tokenizer.chat_template = eos_ended_chat_template(tokenizer.chat_template, tokenizer.eos_token)
    else:
        tokenizer.chat_template = plain_chat_template(tokenizer, frame)
    if tokenizer("x")["input_ids"] != tokenizer("x", add_special_tokens=False)["input_ids"]:
        # One text: nothing added (the template holds the special tokens, so pipeline's
        # add_special_tokens=True and TRL's False agree); a text pair: rmlab's frame.
        before, between, after = ([tokenizer.convert_ids_to_tokens(i) for i in ids] for ids in frame)
        pair = [*before, "$A", *between, "$B:1", *(f"{t}:1" for t in after)]
        special = sorted({(t, tokenizer.convert_tokens_to_ids(t)) for t in before + between + after})
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A", pair=" ".join(pair), special_tokens=special)
    tokenizer.truncation_side = "left"  # rmlab cuts the prompt from the left, never the response's end
    tokenizer.model_max_length = settings["max_length"]
    tokenizer.padding_side = settings["padding_side"]


def model_card(folder: str, backbone: str, native: type | None, info: dict) -> str:
    """README.md of the folder: what the reward is, a 5-line example and the input contract."""
    encoder_frame = info["pooling"] == "pooler" or not info["chat_template"]
    return MODEL_CARD.format(
        folder=folder, backbone=backbone, pooling=info["pooling"], max_abs_diff=info["max_abs_diff"],
        checked=info["checked_responses"], mean=info["reward_mean"], std=info["reward_std"], max_length=info["max_length"],
        loading=f"as transformers' own `{native.__name__}`" if native else
        "through the modeling file in this folder (`trust_remote_code=True`; without it loading fails)",
        remote="" if native else ", trust_remote_code=True",
        rendered="`[CLS] prompt [SEP] response [SEP]`" if encoder_frame else "ending with the eos token `{}`".format(info["eos_token"]),
        read_at="at [CLS], position 0 (pad on the right)" if native and info["pooling"] == "pooler" else
        f"{info['pooling']} pooling over the real tokens (the attention mask)" if not native else
        "at the last token that is not the pad token: the eos token that ends the response",
        generated="(PPO-style, a policy's sampled tokens) the prompt's ids from the template with "
        "`add_generation_prompt=True`, then the response's ids ending at the eos token, as sampled (keep it)"
        if not encoder_frame else "`tokenizer(prompt, response)` gives the same ids for a single-turn prompt",
        truncation="`tokenizer(prompt_text, response, truncation='only_first')` does the same (truncation_side is left)"
        if encoder_frame else "`tokenizer(text, truncation=True)` does the same whenever the response fits "
        "(truncation_side is left, model_max_length is set)",
        padding="right (the head reads position 0)" if native and info["pooling"] == "pooler" else "left or right",
        written=transformers.__version__, oldest=OLDEST_TRANSFORMERS)


def config_fields(config: dict, native: type | None, backbone_model_type: str, info: dict) -> dict:
    """config.json as consumers read it: the remote model_type, top-level rope_theta / rope_scaling
    (transformers 4.x reads only those; 5.x nests them in rope_parameters), OpenRLHF's mean / std."""
    if not native:
        config.update(model_type=REMOTE_MODEL_TYPE, backbone_model_type=backbone_model_type)
        config["auto_map"] = {"AutoConfig": f"{Path(MODELING_FILE).stem}.{REMOTE_CONFIG}",
                              "AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.{REMOTE_CLASS}"}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config.setdefault("rope_scaling", None if scaling.get("rope_type", "default") == "default" else scaling)
    config.update(mean=info["reward_mean"], std=info["reward_std"], rmlab=info)
    return config


def write_folder(folder: Path, model: RewardModel, tokenizer: PreTrainedTokenizerBase, native: type | None,
                 info: dict) -> None:
    """config.json, model.safetensors, the tokenizer files (and the modeling file for remote code)."""
    config = copy.deepcopy(model.backbone.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.pad_token_id = tokenizer.pad_token_id
    prefix = native.base_model_prefix if native else "backbone"
    state = {f"{prefix}.{k}": v for k, v in model.backbone.state_dict().items()}
    head = model.reward_weight()  # OdinLoss: the quality head; ensemble=heads: the mean of the heads' rows
    if native and info["pooling"] == "pooler":  # BertForSequenceClassification: pooler, then classifier
        state.update({f"{prefix}.pooler.dense.weight": model.pooling.dense.weight,
                      f"{prefix}.pooler.dense.bias": model.pooling.dense.bias,
                      "classifier.weight": head, "classifier.bias": torch.zeros(1)})
    else:
        state["score.weight"] = head
    config.architectures = [native.__name__ if native else REMOTE_CLASS]
    if not native:
        supports_sdpa = str(bool(getattr(model.backbone, "_supports_sdpa", False)))
        (folder / MODELING_FILE).write_text(MODELING_SOURCE.replace("SUPPORTS_SDPA", supports_sdpa))
    config.save_pretrained(folder)
    fields = config_fields(json.loads((folder / "config.json").read_text()), native, config.model_type, info)
    (folder / "config.json").write_text(strict_json.dumps(fields, indent=2, sort_keys=True) + "\n")
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    umask_mode(folder / "model.safetensors")
    tokenizer.save_pretrained(folder)
    # transformers 5 names classes 4.x lacks (TokenizersBackend) and rebuilds a BERT tokenizer's
    # post-processor on load; the generic fast class reads tokenizer.json as written, in 4.x and 5.x.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    # save_pretrained keeps only the settings the tokenizer was loaded with; these must travel.
    # (model_input_names too: 4.x's generic class would add token_type_ids, which Llama's forward refuses;
    # and the chat template: transformers < 4.47 reads it only here, not from chat_template.jinja.)
    tokenizer_config.update(truncation_side=tokenizer.truncation_side, padding_side=tokenizer.padding_side,
                            model_max_length=tokenizer.model_max_length, model_input_names=list(tokenizer.model_input_names),
                            chat_template=tokenizer.chat_template)
    (folder / "tokenizer_config.json").write_text(strict_json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def compare(folder: Path, sequences: list[list[int]], expected: torch.Tensor, remote_code: bool, sides: tuple[str, ...]) -> float:
    """Largest |reward| difference between the folder, loaded as a user would, and rmlab, on each padding side."""
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote_code)
    worst = 0.0
    for side in sides:
        batch = PairCollator(tokenizer.pad_token_id, side).pad(sequences)
        rewards = model(**batch).logits[:, 0].float()
        worst = max(worst, (rewards - expected).abs().max().item())
    return worst


def check_tokenizer(folder: Path, pairs: list[dict], settings: dict, remote_code: bool) -> None:
    """The saved tokenizer must turn the validation texts into the ids rmlab trained on: through
    rmlab's own encoding, and through its chat template (whole conversations, nothing truncated)."""
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=remote_code)
    encode, whole = tokenizing_function(tokenizer, settings), tokenizing_function(tokenizer, {**settings, "max_length": 10**9})
    for pair in pairs:
        got, untruncated = encode(pair["prompt"], pair["chosen"], pair["rejected"]), whole(pair["prompt"], pair["chosen"], pair["rejected"])
        for side in ("chosen", "rejected"):
            if got[f"{side}_input_ids"] != pair[f"{side}_input_ids"]:
                raise RuntimeError(f"the exported tokenizer encodes {pair[side][:60]!r} differently from training")
            text = tokenizer.apply_chat_template(pair["prompt"] + [{"role": "assistant", "content": pair[side]}], tokenize=False)
            for add_special_tokens in (True, False):
                if tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"] != untruncated[f"{side}_input_ids"]:
                    raise RuntimeError(f"the exported chat template renders {pair[side][:60]!r} (add_special_tokens="
                                       f"{add_special_tokens}) as other ids than rmlab trains on: {text[-200:]!r}")


def check_heads(checkpoint: dict, aggregation: str | None, path: str) -> None:
    """Before the model is built: a checkpoint of k reward heads (ensemble=heads) exports only as the mean
    of its heads, which is one linear head (rows averaged), exact. Its own aggregation min or
    uncertainty_weighted is not linear in the pooled vector, so no num_labels=1 head computes it: a
    ConfigError naming `aggregation=mean`, unless given; another `aggregation` is refused too."""
    ensemble = (checkpoint["rmlab_config"].get("model") or {}).get("ensemble")
    if not ensemble:
        if aggregation:
            raise ConfigError(f"aggregation={aggregation}: ckpt={path!r} has one reward head, nothing to aggregate; leave it unset")
        return
    own, heads = aggregation or ensemble.get("aggregation", "mean"), ensemble.get("heads")
    if own != "mean":
        raise ConfigError(f"ckpt={path!r} rewards with the {own} of its {heads} heads (model.ensemble.aggregation), which no "
                          "AutoModelForSequenceClassification with num_labels=1 can compute (a min or a std is not one "
                          "linear head). Export the mean of its heads instead, exactly (the mean of linear heads is one): "
                          "add aggregation=mean; or score it with rmlab itself (rmlab.score, rmlab.evaluate, rmlab.audit)")


def export(cfg: DictConfig) -> dict:
    """Write the folder (checked against rmlab's rewards) and return its `rmlab` config entry.
    Raises ConfigError for an ensemble (ckpt=[a,b,...]): separately trained models have no one folder."""
    if not isinstance(cfg.ckpt, str):
        raise ConfigError(f"ckpt={OmegaConf.to_container(cfg.ckpt) if OmegaConf.is_config(cfg.ckpt) else cfg.ckpt}: an "
                          "ensemble of separately trained reward models is not one Hugging Face model, so no consumer could "
                          "compute its aggregated reward from one folder. Export each member (ckpt=<one checkpoint>), "
                          "have the consumer score with each and combine the rewards (mean, min, or mean - k * std; "
                          "docs/audit.md), or audit the ensemble with python -m rmlab.audit ckpt=[...]")
    check_export(cfg.ckpt, cfg.remote_code)  # a pooling with no transformers head: refused before any weights load
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"out={cfg.out!r} exists and is not empty; choose another folder or set overwrite=true")
    checkpoint = load_checkpoint(cfg.ckpt, cfg.trust_remote_code)
    check_heads(checkpoint, cfg.get("aggregation"), cfg.ckpt)
    model, run_cfg = load_reward_model(checkpoint)
    if model.ensemble is not None and cfg.get("aggregation"):
        model.ensemble.aggregation = cfg.aggregation  # what the folder computes, and what the check compares
    if hasattr(model.backbone, "merge_and_unload"):  # LoRA (peft): fold the adapters into the weights
        model.backbone = model.backbone.merge_and_unload()
    pooling = POOLINGS.get(run_cfg.model.pooling._target_)
    if pooling is None:
        raise ValueError(f"pooling {run_cfg.model.pooling._target_!r} has no export; known: {sorted(POOLINGS.values())}")
    config = model.backbone.config
    native = native_class(config, pooling)
    if pooling == "pooler" and native is None:
        raise ValueError(f"pooling=pooler on {type(config).__name__}: the export maps it onto {NATIVE_POOLER} only")
    if native is None and not cfg.remote_code:
        raise ConfigError(no_native_message(type(config).__name__, pooling))

    tokenizer, settings = rmlab_tokenizer(run_cfg)
    check_sequence_end(checkpoint, settings, cfg.ckpt)
    pairs, rewards = validation_rewards(model, run_cfg, cfg.get("val_path"))
    sequences = [p["chosen_input_ids"] for p in pairs] + [p["rejected_input_ids"] for p in pairs]
    if native and pooling == "last" and needs_own_pad_token(tokenizer, sequences):
        add_pad_row(model, tokenizer)
    ignore_segment_ids(model)
    if native and pooling == "pooler":
        settings["padding_side"] = "right"  # BertForSequenceClassification reads position 0 as [CLS]
    consumer_tokenizer(tokenizer, settings)
    n = min(cfg.verify_pairs, len(pairs))  # checked: the first n pairs' chosen and rejected responses
    info = {
        **settings, "pooling": pooling, "eos_token": tokenizer.eos_token,
        "position_ids": "transformers default (arange)" if native else "cumsum(attention_mask) - 1, as rmlab",
        "reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
        "val_rewards": len(rewards), "checked_responses": 2 * n, "checkpoint": str(Path(cfg.ckpt).resolve()),
        "transformers": {"written_with": transformers.__version__, "oldest_tested": OLDEST_TRANSFORMERS},
    }
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_folder(partial, model, tokenizer, native, {**info, "max_abs_diff": None})

    check_tokenizer(partial, pairs[:cfg.verify_pairs], settings, remote_code=native is None)
    picked = [*range(n), *range(len(pairs), len(pairs) + n)]
    sides = ("right",) if native and pooling == "pooler" else ("left", "right")
    info["max_abs_diff"] = compare(partial, [sequences[i] for i in picked], rewards[picked], native is None, sides)
    if info["max_abs_diff"] > cfg.atol:
        raise RuntimeError(f"exported rewards differ from rmlab's by up to {info['max_abs_diff']:.3g} (> atol={cfg.atol}) "
                           f"on {2 * n} validation responses; the folder is left at {partial} for inspection")
    config_file = json.loads((partial / "config.json").read_text())
    config_file["rmlab"] = info
    (partial / "config.json").write_text(strict_json.dumps(config_file, indent=2, sort_keys=True) + "\n")
    backbone = OmegaConf.select(run_cfg, "model.backbone.name_or_path")
    (partial / "README.md").write_text(model_card(str(out), backbone, native, info))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info("exported %s -> %s (%s, pooling=%s; max |reward - rmlab| = %.2g over %d validation responses, padding %s)",
             cfg.ckpt, out, native.__name__ if native else f"remote code {MODELING_FILE}", pooling, info["max_abs_diff"],
             2 * n, " and ".join(sides))
    return info

@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
