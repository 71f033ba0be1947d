"""Export a trained reward model as a Hugging Face folder: `python -m rmlab.export ckpt=<path.ckpt> out=<dir>`.

The folder loads with plain transformers (`AutoModelForSequenceClassification`, `AutoTokenizer`)
and gives the rewards rmlab computes (`logits[:, 0]`); the export checks this itself on the
checkpoint's validation pairs under left and right padding before it moves the folder into place.

- Decoder + last-token pooling: transformers' own `*ForSequenceClassification` class (e.g. Llama).
  It pools the last position whose id is not `config.pad_token_id`: with pad == eos (SmolLM2's
  <|im_end|>) an input that ends in eos, e.g. a response cut at max_length right after it, is scored
  one token early. So the folder gets a pad token that no input contains (`<|pad|>`, one new
  embedding row that no real token attends to) whenever the pad token doubles as eos/bos/unk or
  occurs in the validation inputs. It numbers positions 0..L-1 whatever the padding (rmlab: from
  the attention mask); under left padding rotary embeddings make the two agree up to rounding.
- LoRA checkpoints: the adapters are merged into the backbone weights first (peft's merge_and_unload).
- Any other pooling (mean, cls, last on an encoder) has no transformers class that computes it:
  refused, unless `remote_code=true` writes a small self-contained modeling file (no rmlab
  import) that loads with `trust_remote_code=True`.

config.json also gets an `rmlab` entry: how inputs were tokenized (max_length, chat template or
not, padding side), the pooling, the reward mean and std over the validation split, and the
measured largest difference from rmlab's rewards.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_layers import GenericForSequenceClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from rmlab.config import CONFIG_DIR
from rmlab.data.collate import PairCollator
from rmlab.data.tokenize import special_token_frame, tokenize_pair, use_chat_template
from rmlab.evaluate import load_checkpoint, load_reward_model
from rmlab.launch import short_user_errors
from rmlab.model.backbone import load_tokenizer
from rmlab.model.module import RewardModel
from rmlab.preflight import check_export

log = logging.getLogger(__name__)

POOLINGS = {
    "rmlab.model.pooling.LastTokenPooling": "last",
    "rmlab.model.pooling.MeanPooling": "mean",
    "rmlab.model.pooling.ClsPooling": "cls",
}
PAD_TOKEN = "<|pad|>"
MODELING_FILE = "modeling_rmlab_reward.py"
REMOTE_CLASS = "RmlabRewardModel"

# Written into the folder by `remote_code=true`: it must run without rmlab installed.
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
from transformers import AutoModel, PreTrainedModel
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


class RmlabRewardModel(PreTrainedModel):
    """A base transformer, rmlab's pooling and a bias-free linear score."""

    base_model_prefix = "backbone"
    _supports_sdpa = SUPPORTS_SDPA  # the backbone class's value, filled in by rmlab.export

    def __init__(self, config):
        super().__init__(config)
        self.backbone = AutoModel.from_config(config)
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
'''


def rmlab_tokenizer(run_cfg: DictConfig) -> tuple[PreTrainedTokenizerBase, dict]:
    """The tokenizer a run trained with (padding side applied) and the settings that shape its inputs."""
    data = run_cfg.data
    tokenizer = load_tokenizer(**OmegaConf.to_container(data.tokenizer, resolve=True))
    if data.get("padding_side"):
        tokenizer.padding_side = data.padding_side
    settings = {
        "max_length": int(data.max_length),
        "chat_template": use_chat_template(tokenizer, data.get("chat_template", "auto")),
        "padding_side": tokenizer.padding_side,
        "overlong": "truncate",
    }
    return tokenizer, settings


def encoder(tokenizer: PreTrainedTokenizerBase, settings: dict) -> Callable[..., dict]:
    """`encode(prompt, chosen, rejected=None)`: tokenize_pair with these settings, i.e. the ids rmlab
    feeds the model (over-long inputs truncated as in training, and flagged). A single response is
    scored as a pair of two identical responses."""
    frame = ([], [], []) if settings["chat_template"] else special_token_frame(tokenizer)

    def encode(prompt: list[dict], chosen: str, rejected: str | None = None) -> dict:
        pair = {"prompt": prompt, "chosen": chosen, "rejected": chosen if rejected is None else rejected}
        return tokenize_pair(pair, tokenizer, settings["max_length"], "truncate", settings["chat_template"], frame)

    return encode


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

    Only the generic decoder head qualifies: last non-pad token -> Linear(hidden, 1, bias=False).
    Encoder classes add a pooler (BERT: tanh dense on [CLS]), and nothing in transformers means-pools.
    """
    if pooling != "last" or type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return None
    cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    return cls if issubclass(cls, GenericForSequenceClassification) else None


def no_native_message(config_name: str, pooling: str) -> str:
    """Why a checkpoint needs remote_code=true, and how to export it anyway."""
    why = {
        "mean": "transformers has no sequence-classification head that mean-pools",
        "cls": "transformers' [CLS] heads add a tanh pooler layer (BertForSequenceClassification) and its decoder heads read the last token",
        "last": f"transformers' head for {config_name} is not the generic decoder head (GenericForSequenceClassification) that the "
                "export maps rmlab's last-token reward onto",
    }[pooling]
    return (f"pooling={pooling} on {config_name}: {why}, so a plain transformers export would change the rewards. "
            "Set remote_code=true to write a small modeling file into the folder (loaded with "
            "AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)), or train with pooling=last "
            "on a decoder.")


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


def write_folder(folder: Path, model: RewardModel, tokenizer: PreTrainedTokenizerBase, native: type | None,
                 rmlab_info: dict) -> None:
    """config.json, model.safetensors, the tokenizer files (and the modeling file for remote code)."""
    config = copy.deepcopy(model.backbone.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "reward"}, {"reward": 0}
    config.pad_token_id = tokenizer.pad_token_id
    config.rmlab = rmlab_info
    prefix = native.base_model_prefix if native else "backbone"
    state = {f"{prefix}.{k}": v for k, v in model.backbone.state_dict().items()}
    state["score.weight"] = model.head.weight[:1]  # the reward (OdinLoss: the quality head, not the length head)
    if native:
        config.architectures = [native.__name__]
    else:
        config.architectures = [REMOTE_CLASS]
        config.auto_map = {"AutoModelForSequenceClassification": f"{Path(MODELING_FILE).stem}.{REMOTE_CLASS}"}
        supports_sdpa = str(bool(getattr(model.backbone, "_supports_sdpa", False)))
        (folder / MODELING_FILE).write_text(MODELING_SOURCE.replace("SUPPORTS_SDPA", supports_sdpa))
    config.save_pretrained(folder)
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


@torch.no_grad()
def compare(folder: Path, sequences: list[list[int]], expected: torch.Tensor, remote_code: bool) -> float:
    """Largest |reward| difference between the folder, loaded as a user would, and rmlab, both padding sides."""
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=remote_code).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    worst = 0.0
    for side in ("left", "right"):
        batch = PairCollator(tokenizer.pad_token_id, side).pad(sequences)
        rewards = model(**batch).logits[:, 0].float()
        worst = max(worst, (rewards - expected).abs().max().item())
    return worst


def check_tokenizer(folder: Path, pairs: list[dict], settings: dict) -> None:
    """The saved tokenizer must turn the validation texts into the ids rmlab trained on."""
    encode = encoder(AutoTokenizer.from_pretrained(folder), settings)
    for pair in pairs:
        got = encode(pair["prompt"], pair["chosen"], pair["rejected"])
        for side in ("chosen", "rejected"):
            if got[f"{side}_input_ids"] != pair[f"{side}_input_ids"]:
                raise RuntimeError(f"the exported tokenizer encodes {pair[side][:60]!r} differently from training")


def export(cfg: DictConfig) -> dict:
    """Write the folder (checked against rmlab's rewards) and return its `rmlab` config entry."""
    check_export(cfg.ckpt, cfg.remote_code)  # a pooling with no transformers head: refused before any weights load
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"out={cfg.out!r} exists and is not empty; choose another folder or set overwrite=true")
    model, run_cfg = load_reward_model(load_checkpoint(cfg.ckpt, cfg.trust_remote_code))
    if hasattr(model.backbone, "merge_and_unload"):  # LoRA (peft): fold the adapters into the weights
        model.backbone = model.backbone.merge_and_unload()
    pooling = POOLINGS.get(run_cfg.model.pooling._target_)
    if pooling is None:
        raise ValueError(f"pooling {run_cfg.model.pooling._target_!r} has no export; known: {sorted(POOLINGS.values())}")
    native = native_class(model.backbone.config, pooling)
    if native is None and not cfg.remote_code:
        raise ValueError(no_native_message(type(model.backbone.config).__name__, pooling))

    tokenizer, settings = rmlab_tokenizer(run_cfg)
    pairs, rewards = validation_rewards(model, run_cfg, cfg.get("val_path"))
    sequences = [p["chosen_input_ids"] for p in pairs] + [p["rejected_input_ids"] for p in pairs]
    if native and needs_own_pad_token(tokenizer, sequences):
        add_pad_row(model, tokenizer)
    info = {
        **settings, "pooling": pooling,
        "position_ids": "transformers default (arange)" if native else "cumsum(attention_mask) - 1, as rmlab",
        "reward_mean": rewards.mean().item(), "reward_std": rewards.std(unbiased=False).item(),
        "val_rewards": len(rewards), "checkpoint": str(Path(cfg.ckpt).resolve()),
    }
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_folder(partial, model, tokenizer, native, info)

    check_tokenizer(partial, pairs[:cfg.verify_pairs], settings)
    # The first verify_pairs pairs: their chosen and their rejected responses.
    n = min(cfg.verify_pairs, len(pairs))
    picked = [*range(n), *range(len(pairs), len(pairs) + n)]
    info["max_abs_diff"] = compare(partial, [sequences[i] for i in picked], rewards[picked], remote_code=native is None)
    if info["max_abs_diff"] > cfg.atol:
        raise RuntimeError(f"exported rewards differ from rmlab's by up to {info['max_abs_diff']:.3g} (> atol={cfg.atol}) "
                           f"on {2 * n} validation responses; the folder is left at {partial} for inspection")
    config = json.loads((partial / "config.json").read_text())
    config["rmlab"] = info
    (partial / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info("exported %s -> %s (%s, pooling=%s; max |reward - rmlab| = %.2g over %d validation responses, both padding sides)",
             cfg.ckpt, out, native.__name__ if native else f"remote code {MODELING_FILE}", pooling, info["max_abs_diff"], 2 * n)
    return info


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
@short_user_errors  # a ConfigError/DataError prints its message, not a screen of frames
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
