"""`python -m rmlab.bench`: training throughput of rmlab vs a naive loop vs TRL's RewardTrainer.

For each model and dataset: the pairs are read and tokenized once by rmlab's DataModule, pairs
with a sequence over max_length are left out (so TRL's own length filter cannot change the set),
and the first (warmup + steps) x batch_size train pairs and `eval_pairs` test pairs are written
out. Every leg then trains on exactly those pairs in its own process (peak memory is per leg),
legs alternating round by round; rmlab runs as a user runs it (`python -m rmlab.train`, its
throughput callback measuring), the baselines through rmlab/bench/baselines.py. The report
(bench.md, bench.json in the run dir) gives each leg's median over the rounds: pairs/s, non-pad
tokens computed per second, padding fraction, model FLOP/s and MFU against the matmul peak
measured here, peak memory, and held-out accuracy after the same steps.

A response-set dataset (rmlab/bench/sets.py) adds the leg `rmlab_sets`: the same K-response sets
trained as sets, while the pair legs train on their pairs; it is reported per set and per response.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import rmlab  # noqa: F401  (first: caps oneDNN before torch runs a kernel)
from rmlab import strict_json
from rmlab.bench.sets import SET_DATASETS, describe, make_sets, per_set, set_table
from rmlab.config import CONFIG_DIR
from rmlab.data.formats import template_messages
from rmlab.hardware import cpu_bf16_speedup, matmul_peak_flops

log = logging.getLogger("rmlab.bench")


def model_config(name: str) -> DictConfig:
    """The `model` node that `python -m rmlab.train model=<name>` composes."""
    return hydra.compose(config_name="train", overrides=[f"model={name}"]).model


def make_pairs(cfg: DictConfig, model: str, dataset: str, out: Path) -> dict | None:
    """Write train/eval pairs as text (for rmlab.train) and as token ids (for the baselines)."""
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.sources import LocalFiles, Synthetic

    if dataset == "synthetic":
        source = Synthetic(n_train=2000, n_val=50, n_test=cfg.eval_pairs * 2, seed=cfg.seed)
    else:
        path = Path(hydra.utils.to_absolute_path(cfg.files[dataset]))
        if not path.exists():
            log.warning("%s: %s not found, skipped", dataset, path)
            return None
        source = LocalFiles(str(path))
    backbone = OmegaConf.to_container(model_config(model).backbone)
    dm = PreferenceDataModule(tokenizer=backbone, source=source, max_length=cfg.max_length, overlong="drop",
                              on_bad_row="skip", rejects_file=None, seed=cfg.seed)
    dm.setup("fit")
    dm.setup("test")
    n_train = (cfg.warmup_steps + cfg.steps) * cfg.batch_size
    files, counts = {}, {}
    for split, n in (("train", n_train), ("test", cfg.eval_pairs)):
        rows = dm.splits[split]
        if len(rows) < n and split == "train":
            raise ValueError(f"{dataset}: {len(rows)} train pairs fit max_length={cfg.max_length}; {n} needed "
                             "for (warmup_steps + steps) x batch_size")
        if len(rows) < n:
            log.warning("%s: %d test pairs fit max_length=%d (eval_pairs=%d): scoring those", dataset, len(rows),
                        cfg.max_length, n)
        rows = rows.select(range(min(n, len(rows))))
        text, ids = out / f"{split}.jsonl", out / f"{split}.tokens.jsonl"
        with text.open("w") as t, ids.open("w") as i:
            for row in rows:
                t.write(json.dumps({"prompt": template_messages(row["prompt"]), "chosen": [{"role": "assistant", "content": row["chosen"]}],
                                    "rejected": [{"role": "assistant", "content": row["rejected"]}]}) + "\n")
                i.write(json.dumps({"chosen_input_ids": row["chosen_input_ids"],
                                    "rejected_input_ids": row["rejected_input_ids"]}) + "\n")
        files[split] = (str(text), str(ids))
        counts[split] = len(rows)
    return {"files": files, "pairs": counts, "batch_size": cfg.batch_size, "pad_token_id": dm.tokenizer.pad_token_id, "backbone": backbone,
            "dropped_over_max_length": dm.stats["train"]["dropped"], "packing": dm.packing}


def run(command: list[str], log_file: Path) -> None:
    with log_file.open("w") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "WANDB_MODE": "offline"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed (exit {done.returncode}); see {log_file}")


def rmlab_leg(cfg: DictConfig, model: str, data: dict, precision: str, causal: bool, out: Path, sets: bool = False) -> dict:
    """`python -m rmlab.train` on the pairs (or, with `sets`, on the response sets) of `data`."""
    train_text, test_text = ((data["files"]["train_sets"], data["files"]["test_sets"]) if sets
                             else (data["files"]["train"][0], data["files"]["test"][0]))
    batch_size = cfg.sets.batch_size if sets else data["batch_size"]
    steps = cfg.warmup_steps + cfg.steps
    run([sys.executable, "-m", "rmlab.train", f"model={model}", f"pooling={'last' if causal else 'mean'}",
         "data=local", f"data.path={train_text}", f"data.val_path={test_text}", f"data.test_path={test_text}",
         f"data.max_length={cfg.max_length}", f"data.batch_size={batch_size}", "data.overlong=drop",
         f"trainer.max_steps={steps}", "trainer.max_epochs=1", "+trainer.limit_val_batches=0",
         f"trainer.precision={'bf16-mixed' if precision == 'bf16' else '32-true'}", f"model.optimizer.lr={cfg.lr}",
         f"seed={cfg.seed}", "logger=csv", "~diagnostics", f"callbacks.throughput.warmup_steps={cfg.warmup_steps}",
         f"hydra.run.dir={out}"], out / "run.log")
    summary = json.loads((out / "summary.json").read_text())
    speed = ({"sets_per_s": summary["train/sets_per_s"], "responses_per_s": summary["train/responses_per_s"]} if sets
             else {"pairs_per_s": summary["train/pairs_per_s"]})
    return {**speed, "tokens_per_s": summary["train/tokens_per_s"],
            "padding_fraction": summary["train/padding_fraction"], "flops_per_s": summary["train/flops_per_s"],
            "eval_acc": summary["test/acc"], "peak_rss_mb": summary["peak_rss_mb"],
            "peak_gpu_mb": summary.get("peak_gpu_mb"),
            "notes": f"rmlab.train defaults{' on the set file, set_loss=all_pairs' if sets else ''}: "
                     f"packing={data['packing']}, group_by_length, no gradient checkpointing"}


def baseline_leg(cfg: DictConfig, impl: str, data: dict, precision: str, params: int, layers: int, hidden: int,
                 causal: bool, out: Path) -> dict:
    (_, train_ids), (_, test_ids) = data["files"]["train"], data["files"]["test"]
    from rmlab.hub import local_source

    backbone = data["backbone"]
    spec = {"impl": impl, "model_dir": local_source(backbone["name_or_path"], backbone.get("gguf_file")),
            "train_file": train_ids, "eval_file": test_ids, "batch_size": data["batch_size"], "max_length": cfg.max_length,
            "precision": precision, "warmup_steps": cfg.warmup_steps, "steps": cfg.steps, "lr": cfg.lr,
            "seed": cfg.seed, "pad_token_id": data["pad_token_id"], "decoder": causal}
    run([sys.executable, "-m", "rmlab.bench.baselines", json.dumps(spec)], out / "run.log")
    result = json.loads((out / "run.log").read_text().strip().splitlines()[-1])
    seconds = sum(result["step_times"])
    lengths = [length for step in result["seq_lengths"] for length in step]
    attended = sum(length * (length + 1) / 2 if causal else length**2 for length in lengths)
    flops = 3 * (2 * params * sum(lengths) + 4 * layers * hidden * attended)
    return {"pairs_per_s": cfg.steps * data["batch_size"] / seconds, "tokens_per_s": sum(lengths) / seconds,
            "padding_fraction": 1 - sum(lengths) / sum(result["padded_tokens"]), "flops_per_s": flops / seconds,
            "eval_acc": result["eval_acc"], "peak_rss_mb": result["peak_rss_mb"], "peak_gpu_mb": result["peak_gpu_mb"],
            "notes": result["impl_notes"]}


def shape(name: str) -> tuple[int, int, int, bool]:
    """(matmul parameters, layers, hidden size, causal) of a model, as rmlab's throughput counts them."""
    from rmlab.hub import is_causal_decoder
    from rmlab.model.backbone import load_backbone
    from rmlab.throughput import matmul_parameters

    backbone = load_backbone(**{k: v for k, v in OmegaConf.to_container(model_config(name).backbone).items()
                                if k != "pad_token"})
    config = backbone.config
    head = config.hidden_size  # the reward head: Linear(hidden, 1)
    return matmul_parameters(backbone) + head, config.num_hidden_layers, config.hidden_size, is_causal_decoder(config)


def median_row(runs: list[dict]) -> dict:
    row = {key: statistics.median(r[key] for r in runs) for key in runs[0] if isinstance(runs[0][key], (int, float))}
    row["runs"] = len(runs)
    row["notes"] = runs[0]["notes"]
    return row


def report(results: list[dict], peaks: dict, cfg: DictConfig) -> str:
    pairs = [r for r in results if "k" not in r]
    sets = [r for r in results if "k" in r]
    lines = [f"rmlab.bench: batch {cfg.batch_size} pairs (set data: {cfg.sets.batch_size} sets), max_length "
             f"{cfg.max_length}, {cfg.warmup_steps} warm-up + {cfg.steps} timed steps, median of {cfg.repeats} alternating rounds; "
             f"device {torch.cuda.get_device_name() if torch.cuda.is_available() else f'CPU, {torch.get_num_threads()} threads'}; "
             "measured matmul peak " + ", ".join(f"{k} {v / 1e12:.3g} TFLOP/s" for k, v in peaks.items()), ""]
    if pairs:
        lines += ["| model | data | precision | impl | pairs/s | tokens/s | padding | TFLOP/s | MFU | peak RSS MB | eval acc (pairs) | speed-up |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in pairs:
        lines.append(f"| {r['model']} | {r['data']} | {r['precision']} | {r['impl']} | {r['pairs_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['padding_fraction']:.1%} | {r['flops_per_s'] / 1e12:.3f} | "
                     f"{r['mfu']:.1%} | {r['peak_rss_mb']:.0f} | {r['eval_acc']:.3f} ({r['eval_pairs']}) | {r['speedup']} |")
    if sets:
        lines += ["", *set_table(sets), "", "Response sets: the pair legs train on the same sets' untied pairs, as many "
                  "sets a step; their sets/s is pairs/s over the pairs per set, responses/s is sets/s x K; pairs/s of "
                  "rmlab_sets is at the same information (sets/s x pairs per set); speed-up: rmlab_sets sets/s over that "
                  "leg's.", *describe(sets)]
    lines += ["", "tokens/s: non-pad tokens computed (a packed pair computes its prompt once); speed-up: rmlab "
              "pairs/s over that leg's. Legs:"]
    lines += sorted({f"- {r['impl']}: {r['notes']}" for r in results})
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="bench")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    impls = list(cfg.impls)
    if "trl" in impls and importlib.util.find_spec("trl") is None:
        log.warning("trl is not installed (pip install trl): the TRL leg is skipped")
        impls.remove("trl")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() or (
            not torch.cuda.is_available() and cpu_bf16_speedup() > 1.2) else "fp32"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if precision == "bf16" else "float32"
    peak = matmul_peak_flops(device, dtype, fresh=True)
    results = []
    for model in cfg.models:
        params, layers, hidden, causal = shape(model)
        for dataset in cfg.datasets:
            where = out / model / dataset
            where.mkdir(parents=True, exist_ok=True)
            if dataset in SET_DATASETS:
                data = make_sets(cfg, OmegaConf.to_container(model_config(model).backbone), dataset, where)
            else:
                data = make_pairs(cfg, model, dataset, where)
            if data is None:
                continue
            legs = (["rmlab_sets"] if "k" in data else []) + impls
            reference = legs[0] if legs[0] in ("rmlab_sets", "rmlab") else None
            runs: dict[str, list[dict]] = {impl: [] for impl in legs}
            for round_ in range(cfg.repeats):
                for impl in legs:
                    leg_dir = where / f"{impl}-{round_}"
                    leg_dir.mkdir(exist_ok=True)
                    log.info("%s / %s: %s, round %d", model, dataset, impl, round_ + 1)
                    if impl in ("rmlab", "rmlab_sets"):
                        result = rmlab_leg(cfg, model, data, precision, causal, leg_dir, sets=impl == "rmlab_sets")
                    else:
                        result = baseline_leg(cfg, impl, data, precision, params, layers, hidden, causal, leg_dir)
                    if "k" in data:
                        result = per_set(result, data, impl)
                    log.info("  %.3f %s/s, %.0f tokens/s, eval acc %.3f", result.get("sets_per_s", result["pairs_per_s"]),
                             "sets" if "k" in data else "pairs", result["tokens_per_s"], result["eval_acc"])
                    runs[impl].append(result)
            # Measured again after the legs: the peak is the best seen (a busy moment would understate it).
            peak = max(peak, matmul_peak_flops(device, dtype, fresh=True))
            rows = {impl: median_row(r) for impl, r in runs.items()}
            speed = "sets_per_s" if "k" in data else "pairs_per_s"
            for impl, row in rows.items():
                speedup = "" if impl == reference or reference is None else f"{rows[reference][speed] / row[speed]:.2f}x"
                extra = ({key: data[key] for key in ("k", "pairs_per_set", "prompt_tokens_per_set", "response_tokens_per_set")}
                         | {"train_sets": data["sets"]["train"], "sets_per_step": cfg.sets.batch_size} if "k" in data else {})
                results.append({"model": model, "data": dataset, "precision": precision, "impl": impl, **row,
                                "speedup": speedup,
                                "runs_raw": [{k: v for k, v in r.items() if k != "notes"} for r in runs[impl]],
                                "train_pairs": data["pairs"]["train"], "eval_pairs": data["pairs"]["test"],
                                "dropped_over_max_length": data["dropped_over_max_length"], **extra})
            for result in results:  # every row against the best peak seen so far, the one bench.json gives
                result["mfu"] = result["flops_per_s"] / peak
            text = report(results, {dtype: peak}, cfg)
            (out / "bench.md").write_text(text)
            (out / "bench.json").write_text(strict_json.dumps({"config": OmegaConf.to_container(cfg, resolve=True),
                                                        "peak_flops": {dtype: peak}, "results": results}, indent=2))
    print(report(results, {dtype: peak}, cfg))
    log.info("written to %s", out)


if __name__ == "__main__":
    main()
