"""A trained model read back: the checkpoint rmlab.train wrote, its RewardModel, and the tokenizer and
settings that turn text into the ids it was trained on, and the Scorer that gives rewards from a
checkpoint or an export. Shared by rmlab.evaluate, rmlab.export, rmlab.score and rmlab.audit, so
that no entry point imports another.
"""

from __future__ import annotations

import contextlib
import gzip
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

from rmlab import strict_json
from rmlab.config import config_nodes
from rmlab.data.collate import PairCollator
from rmlab.data.tokenize import special_token_frame, tokenize_pair, use_chat_template
from rmlab.errors import ConfigError
from rmlab.hub import load_tokenizer

if TYPE_CHECKING:  # built by instantiate from the checkpoint's config: scoring an export never imports Lightning
    from rmlab.model.module import RewardModel

# What a checkpoint's stored config may name as a `_target_`: instantiate would call anything else
# it names, so a checkpoint from elsewhere could run code that weights_only=True keeps out.
TRUSTED_TARGETS = ("rmlab.", "torch.", "transformers.", "lightning.")


def load_checkpoint(path: str, trust_remote_code: bool = False) -> dict:
    """A checkpoint written by rmlab.train, loaded without unpickling code (weights_only=True). Its
    config may only build rmlab/torch/transformers/lightning objects, and a backbone with
    trust_remote_code needs the caller's trust_remote_code=true."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"ckpt={path!r}: no such file ({file.resolve()})")
    checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    if not checkpoint.get("rmlab_config"):
        raise ValueError(f"ckpt={path!r} has no rmlab config: it was not written by rmlab.train")
    if not trust_remote_code:
        run_cfg = OmegaConf.create(checkpoint["rmlab_config"])
        targets = [str(node._target_) for _, node in config_nodes(run_cfg) if "_target_" in node]  # nothing imported
        foreign = [t for t in targets if not t.startswith(TRUSTED_TARGETS)]
        if foreign or OmegaConf.select(run_cfg, "model.backbone.trust_remote_code"):
            what = f"builds {foreign}" if foreign else "loads its backbone with trust_remote_code=true"
            raise ConfigError(f"ckpt={path!r} {what}, which runs code from outside rmlab, torch and transformers; "
                              "if you trust where the checkpoint came from, add trust_remote_code=true")
    return checkpoint


def load_reward_model(checkpoint: dict) -> tuple[RewardModel, DictConfig]:
    """The trained RewardModel of a loaded rmlab checkpoint (eval mode, CPU) and its resolved run config."""
    run_cfg = OmegaConf.create(checkpoint["rmlab_config"])
    model = instantiate(run_cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), run_cfg


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


def tokenizing_function(tokenizer: PreTrainedTokenizerBase, settings: dict) -> Callable[..., dict]:
    """`encode(prompt, chosen, rejected=None)`: tokenize_pair with these settings, i.e. the ids rmlab
    feeds the model (over-long inputs truncated as in training, and flagged). A single response is
    scored as a pair of two identical responses."""
    frame = ([], [], []) if settings["chat_template"] else special_token_frame(tokenizer)

    def encode(prompt: list[dict], chosen: str, rejected: str | None = None) -> dict:
        pair = {"prompt": prompt, "chosen": chosen, "rejected": chosen if rejected is None else rejected}
        return tokenize_pair(pair, tokenizer, settings["max_length"], "truncate", settings["chat_template"], frame)

    return encode


def check_sequence_end(checkpoint: dict, settings: dict, path: str) -> None:
    """Refuse a chat-template checkpoint trained before its inputs ended at the eos token: it learned
    its reward at the template's text after eos (ChatML: "\\n"), where consumers no longer score."""
    from rmlab.checkpoint import written_before  # here: rmlab.checkpoint imports Lightning (~5 s)

    # From 0.2 on every checkpoint ends at eos; before, only those with the marker rmlab_sequence_end=eos did.
    if settings["chat_template"] and written_before(checkpoint, "0.2") and checkpoint.get("rmlab_sequence_end") != "eos":
        raise ValueError(f"ckpt={path!r} was trained by an rmlab that read chat-template rewards after the eos token "
                         "(e.g. at the newline after <|im_end|>), not at the eos token where generated responses end and "
                         "where exports, evaluation and scoring now read them; its rewards there were never trained. "
                         "Retrain it with this rmlab.")


class Scorer:
    """A reward model and the tokenization it was trained with, from an rmlab.export folder
    (plain transformers + the settings in config.json) or an rmlab.train checkpoint (RewardModel)."""

    def __init__(self, model_path: str, trust_remote_code: bool = False, device: str = "cpu"):
        path = Path(model_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model_path={model_path!r}: no such export folder or checkpoint ({path.resolve()})")
        if path.is_dir():
            config_file = path / "config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            if "rmlab" not in config:
                raise ValueError(f"model_path={model_path!r}: not a folder written by rmlab.export (config.json has no 'rmlab' entry)")
            if "auto_map" in config and not trust_remote_code:
                raise ValueError(f"model_path={model_path!r} computes its reward (pooling={config['rmlab']['pooling']}) with "
                                 "the modeling file rmlab.export wrote into it; run with trust_remote_code=true to load it")
            self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.settings, self.exported = config["rmlab"], True
            # transformers' own heads number positions 0..L-1 even for left-padded rows; rmlab's come from the mask.
            self.positions_from_mask = "position_ids" in inspect.signature(self.model.forward).parameters
        else:
            checkpoint = load_checkpoint(model_path, trust_remote_code)
            self.model, run_cfg = load_reward_model(checkpoint)
            (self.tokenizer, self.settings), self.exported = rmlab_tokenizer(run_cfg), False
            check_sequence_end(checkpoint, self.settings, model_path)
        self.device = torch.device(device)
        self.model.eval().to(self.device)
        # A checkpoint of k reward heads (ensemble=heads): its reward is their model.ensemble.aggregation.
        ensemble = None if self.exported else self.model.ensemble
        self.heads = ensemble.heads if ensemble is not None else 1

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_heads: bool = False) -> torch.Tensor:
        """One fp32 reward per row ([N]); all_heads: each reward head's ([N, heads]; heads = 1 unless the
        checkpoint has an ensemble of heads)."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if self.exported:
            extra = {"position_ids": (attention_mask.cumsum(dim=1) - 1).clamp(min=0)} if self.positions_from_mask else {}
            rewards = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits[:, 0].float()
            return rewards[:, None] if all_heads else rewards
        if all_heads:
            return self.model(input_ids, attention_mask, all_heads=True).float()[:, :self.heads]  # OdinLoss: quality head
        return self.model(input_ids, attention_mask).float()


@torch.no_grad()
def score_sequences(scorer: Scorer, sequences: list[list[int]], batch_size: int = 16, sort_window: int = 1024,
                    precision: str = "fp32", all_heads: bool = False) -> list:
    """One reward per token-id sequence, in input order (all_heads: a list of scorer.heads rewards each).
    Within each window of `sort_window` sequences, batches are formed longest first so that a batch holds
    similar lengths."""
    collator = PairCollator(scorer.tokenizer.pad_token_id, scorer.settings["padding_side"])
    autocast = (torch.autocast(scorer.device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    rewards = [0.0] * len(sequences)
    with tqdm(total=len(sequences), desc="scoring", unit="seq") as bar:
        for start in range(0, len(sequences), sort_window):
            window = range(start, min(start + sort_window, len(sequences)))
            order = sorted(window, key=lambda i: len(sequences[i]), reverse=True)
            for first in range(0, len(order), batch_size):
                rows = order[first:first + batch_size]
                batch = collator.pad([sequences[i] for i in rows])
                with autocast:
                    out = scorer(batch["input_ids"], batch["attention_mask"], all_heads)
                for i, reward in zip(rows, out.tolist()):
                    rewards[i] = reward
                bar.update(len(rows))
    return rewards


def write_rows(path: str, rows: list[dict]) -> None:
    """JSON Lines, gzipped when the name ends in .gz."""
    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if file.suffix == ".gz" else open)(file, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(strict_json.dumps(row, ensure_ascii=False, default=str) + "\n")
