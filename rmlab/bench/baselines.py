"""Baseline legs for the reward-model benchmark: a naive textbook loop and TRL's RewardTrainer.

Each leg trains a Bradley-Terry reward model on pre-tokenized pairs for `warmup_steps + steps`
steps and reports per-step wall times, token counts, eval accuracy and peak memory.
Run one leg per process: `python -m rmlab.bench.baselines '<json spec>'` prints the result as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from itertools import cycle, islice

import torch
from torch import nn

import rmlab  # noqa: F401  (first: caps oneDNN before torch runs a kernel)
from rmlab.data.collate import PairCollator

EVAL_BATCH = 32
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # read when huggingface_hub is imported; TRL pings otherwise


def _read_pairs(path: str) -> list[tuple[list[int], list[int]]]:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(r["chosen_input_ids"], r["rejected_input_ids"]) for r in rows]


def train_pairs(spec: dict) -> list[tuple[list[int], list[int]]]:
    """The pairs of every step in order: the train file cycled to (warmup + steps) * batch pairs."""
    pairs = _read_pairs(spec["train_file"])
    longest = max(len(s) for pair in pairs for s in pair)
    if longest > spec["max_length"]:
        raise ValueError(f"{spec['train_file']} has a {longest}-token sequence, over max_length={spec['max_length']}")
    n = (spec["warmup_steps"] + spec["steps"]) * spec["batch_size"]
    return list(islice(cycle(pairs), n))


def _pad(seqs: list[list[int]], pad_id: int, length: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    batch = PairCollator(pad_id, "left" if left else "right").pad(seqs, length)
    return batch["input_ids"], batch["attention_mask"]


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def _eval_acc(score, pairs, pad_id: int, left: bool, device: torch.device, precision: str) -> float:
    """Pairwise accuracy (ties 0.5); `score(ids, mask)` returns one reward per row."""
    total = 0.0
    for i in range(0, len(pairs), EVAL_BATCH):
        chunk = pairs[i:i + EVAL_BATCH]
        seqs = [c for c, _ in chunk] + [r for _, r in chunk]
        ids, mask = _pad(seqs, pad_id, max(map(len, seqs)), left)
        with _autocast(device, precision):
            rc, rr = score(ids.to(device), mask.to(device)).float().chunk(2)
        total += float((rc > rr).sum() + 0.5 * (rc == rr).sum())
    return total / len(pairs)


def _memory(device: torch.device) -> dict:
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def naive_leg(spec: dict, device: torch.device) -> dict:
    """Two forwards per step over static left padding to max_length, last-position linear head."""
    from transformers import AutoModel, set_seed

    set_seed(spec["seed"])
    pad_id, max_len, bs = spec["pad_token_id"], spec["max_length"], spec["batch_size"]
    backbone = AutoModel.from_pretrained(spec["model_dir"], dtype=torch.float32)
    backbone.config.pad_token_id = pad_id
    head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
    model = nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"])

    def score(ids, mask):
        # positions from the mask, so left padding does not shift the real tokens' positions
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
        return head(hidden[:, -1]).squeeze(-1)

    pairs = train_pairs(spec)
    times, seq_lengths, padded = [], [], []
    _sync(device)
    times.append(time.perf_counter())
    for step in range(spec["warmup_steps"] + spec["steps"]):
        batch = pairs[step * bs:(step + 1) * bs]
        chosen, rejected = [c for c, _ in batch], [r for _, r in batch]
        c_ids, c_mask = _pad(chosen, pad_id, max_len, left=True)
        r_ids, r_mask = _pad(rejected, pad_id, max_len, left=True)
        with _autocast(device, spec["precision"]):
            r_c = score(c_ids.to(device), c_mask.to(device))
            r_r = score(r_ids.to(device), r_mask.to(device))
        loss = -nn.functional.logsigmoid(r_c.float() - r_r.float()).mean()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        _sync(device)
        times.append(time.perf_counter())
        seq_lengths.append([len(s) for s in chosen + rejected])
        padded.append(c_ids.numel() + r_ids.numel())

    model.eval()
    acc = _eval_acc(score, _read_pairs(spec["eval_file"]), pad_id, True, device, spec["precision"])
    w = spec["warmup_steps"]
    return {
        "step_times": [b - a for a, b in zip(times[w:-1], times[w + 1:])],
        "seq_lengths": seq_lengths[w:],
        "padded_tokens": padded[w:],
        "eval_acc": acc,
        **_memory(device),
        "impl_notes": (f"naive loop: AutoModel + Linear(hidden,1) on the last position, static LEFT padding to "
                       f"max_length={max_len}, two forwards (chosen, rejected) per step, dropout off, AdamW, no "
                       f"scheduler, clip 1.0, {'bf16 autocast, fp32 weights' if spec['precision'] == 'bf16' else 'fp32'}, "
                       "no gradient checkpointing"),
    }


def trl_leg(spec: dict, device: torch.device) -> dict:
    """TRL's RewardTrainer with its defaults, fed the pre-tokenized pairs (chosen_ids / rejected_ids)."""
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    pad_id, bs, w = spec["pad_token_id"], spec["batch_size"], spec["warmup_steps"]
    pairs = train_pairs(spec)
    dataset = Dataset.from_dict({"chosen_ids": [c for c, _ in pairs], "rejected_ids": [r for _, r in pairs]})
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    transformers.set_seed(spec["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = pad_id

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_train_begin(self, args, state, control, **kwargs):
            _sync(device)
            self.times.append(time.perf_counter())

        on_step_end = on_train_begin

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=bs, max_length=spec["max_length"],
            learning_rate=spec["lr"], max_steps=w + spec["steps"], bf16=spec["precision"] == "bf16",
            use_cpu=device.type == "cpu", seed=spec["seed"], report_to="none", save_strategy="no",
            logging_strategy="no", disable_tqdm=True, train_sampling_strategy="sequential",
        )
        trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                callbacks=[clock])
        assert model.config.pad_token_id == pad_id, (model.config.pad_token_id, pad_id)
        stats = []
        collate = trainer.data_collator

        def recording_collate(examples):
            batch = collate(examples)
            stats.append((batch["attention_mask"].sum(1).tolist(), batch["input_ids"].numel()))
            return batch

        trainer.data_collator = recording_collate
        trainer.train()
        checkpointing = trainer.model.is_activation_checkpointing
        kept = len(trainer.train_dataset)

    model = trainer.model.eval()

    def score(ids, mask):
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, 0]

    acc = _eval_acc(score, _read_pairs(spec["eval_file"]), pad_id, False, device, spec["precision"])
    times = clock.times
    return {
        "step_times": [b - a for a, b in zip(times[w:-1], times[w + 1:])],
        "seq_lengths": [lengths for lengths, _ in stats[w:w + spec["steps"]]],
        "padded_tokens": [n for _, n in stats[w:w + spec["steps"]]],
        "eval_acc": acc,
        **_memory(device),
        "impl_notes": (f"TRL {trl.__version__} RewardTrainer (transformers {transformers.__version__}), "
                       f"gradient_checkpointing={checkpointing} (TRL default), one forward over chosen+rejected "
                       f"(2*batch rows), dynamic RIGHT padding to the batch max (DataCollatorForPreference, "
                       f"pad_to_multiple_of={args.pad_to_multiple_of}), disable_dropout={args.disable_dropout}, "
                       f"{_name(args.optim)} + {_name(args.lr_scheduler_type)} scheduler, max_grad_norm={args.max_grad_norm}, "
                       f"bf16={args.bf16}, sequential sampler, {kept}/{len(pairs)} pairs kept by its max_length "
                       "filter, reward at the last non-pad token of AutoModelForSequenceClassification"),
    }


def _name(option) -> str:
    return str(getattr(option, "value", option))


def run_leg(spec: dict) -> dict:
    """Run one benchmark leg ("naive" or "trl") as described by `spec`; returns a JSON-able dict."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    legs = {"naive": naive_leg, "trl": trl_leg}
    if spec["impl"] not in legs:
        raise ValueError(f"unknown impl {spec['impl']!r}; expected one of {sorted(legs)}")
    return legs[spec["impl"]](spec, device)


if __name__ == "__main__":
    result = run_leg(json.loads(sys.argv[1]))
    print(json.dumps(result), flush=True)
