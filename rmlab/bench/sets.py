"""Response-set data for `python -m rmlab.bench`: the same K-response sets, trained as sets and as pairs.

A set dataset (`alpacaeval_sets`, `synthetic_sets`) gives K-response sets whose every sequence
(prompt + response) fits max_length, and the same sets expanded into their untied pairs
(rmlab.data.response_sets.expand_to_pairs), as text and as token ids. Then:
- `rmlab_sets` trains on the sets (`python -m rmlab.train` on the set file, `set_loss=all_pairs`):
  `sets.batch_size` sets a step, one packed row per set on decoders, so the prompt is computed once;
- the pair legs (rmlab, naive, trl) train on the pairs, `sets.batch_size` x (pairs per set) pairs a
  step: each step holds the same information, every untied pair of the same sets.
Speeds are given per set and per response; a pair leg's sets/s is its pairs/s over the pairs per set.
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rmlab.data.formats import template_messages
from rmlab.data.response_sets import alpacaeval_sets, expand_to_pairs

log = logging.getLogger("rmlab.bench")
SET_DATASETS = ("alpacaeval_sets", "synthetic_sets")


def k_responses(response_set: dict, k: int) -> dict | None:
    """The k shortest responses (in characters) of a set whose gold scores all differ, so that each
    of their k(k-1)/2 pairs teaches a preference; in the set's order. None: fewer than k distinct scores."""
    responses, scores = response_set["responses"], response_set["scores"]
    kept, seen = [], set()
    for i in sorted(range(len(responses)), key=lambda i: len(responses[i])):
        if scores[i] not in seen and len(kept) < k:
            kept.append(i)
            seen.add(scores[i])
    if len(kept) < k:
        return None
    kept.sort()
    return {"prompt": response_set["prompt"], "responses": [responses[i] for i in kept], "scores": [scores[i] for i in kept]}


def alpacaeval_candidates(path: Path, judge: str | None, k: int, out: Path) -> int:
    """Write the k-response sets (k_responses) of an AlpacaEval pairs file's sets of one judge to `out`."""
    with gzip.open(path, "rt") if path.suffix == ".gz" else path.open() as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    chosen = [k_responses(s, k) for s in alpacaeval_sets(p for p in pairs if judge is None or p["judge"] == judge)]
    chosen = [s for s in chosen if s is not None]
    out.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in chosen))
    return len(chosen)


def _pair_text(pair: dict) -> dict:
    return {"prompt": pair["prompt"], "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def make_sets(cfg: DictConfig, backbone: dict, dataset: str, out: Path) -> dict | None:
    """Write train/test sets (for rmlab_sets), their pairs as text (for rmlab) and as token ids (for the
    baselines); the first (warmup + steps) x sets.batch_size train sets and up to sets.eval_sets test sets.

    Raises ValueError when too few sets fit max_length, or when the sets give different numbers of
    pairs (a step of the pair legs would then not hold the same sets)."""
    from rmlab.data.datamodule import PreferenceDataModule
    from rmlab.data.sources import LocalFiles, SyntheticSets

    n_train = (cfg.warmup_steps + cfg.steps) * cfg.sets.batch_size
    if dataset == "synthetic_sets":
        source = SyntheticSets(k=cfg.sets.k, n_train=2 * n_train, n_val=8, n_test=2 * cfg.sets.eval_sets, seed=cfg.seed)
    else:
        path = Path(hydra.utils.to_absolute_path(cfg.files[dataset]))
        if not path.exists():
            log.warning("%s: %s not found, skipped", dataset, path)
            return None
        candidates = out / "candidates.sets.jsonl"
        count = alpacaeval_candidates(path, cfg.sets.judge, cfg.sets.k, candidates)
        log.info("%s: %d sets with %d distinct gold scores (their %d shortest responses)", dataset, count, cfg.sets.k, cfg.sets.k)
        source = LocalFiles(str(candidates))  # val and test carved out by prompt
    dm = PreferenceDataModule(tokenizer=backbone, source=source, max_length=cfg.max_length, overlong="drop",
                              on_bad_row="skip", rejects_file=None, seed=cfg.seed)
    dm.setup("fit")
    dm.setup("test")
    files, counts, pairs_per_set, tokens = {}, {}, set(), {"prompt": 0, "responses": 0}
    for split, n in (("train", n_train), ("test", cfg.sets.eval_sets)):
        rows = dm.splits[split]
        if len(rows) < n and split == "train":
            raise ValueError(f"{dataset}: {len(rows)} train sets fit max_length={cfg.max_length}; {n} needed for "
                             "(warmup_steps + steps) x sets.batch_size")
        rows = rows.select(range(min(n, len(rows))))
        sets, text, ids = out / f"{split}.sets.jsonl", out / f"{split}.jsonl", out / f"{split}.tokens.jsonl"
        with sets.open("w") as s, text.open("w") as t, ids.open("w") as i:
            for row in rows:
                prompt = template_messages(row["prompt"])
                s.write(json.dumps({"prompt": prompt, "responses": row["responses"], "scores": row["scores"]}) + "\n")
                text_pairs, _ = expand_to_pairs({"prompt": prompt, "responses": row["responses"], "scores": row["scores"]})
                id_pairs, _ = expand_to_pairs({"prompt": None, "responses": row["input_ids"], "scores": row["scores"]})
                t.writelines(json.dumps(_pair_text(p)) + "\n" for p in text_pairs)
                i.writelines(json.dumps({"chosen_input_ids": p["chosen"], "rejected_input_ids": p["rejected"]}) + "\n"
                             for p in id_pairs)
                pairs_per_set.add(len(id_pairs))
                if split == "train":
                    tokens["responses"] += sum(row["response_tokens"])
                    tokens["prompt"] += len(row["input_ids"][0]) - row["response_tokens"][0]
        files[split] = (str(text), str(ids))
        files[f"{split}_sets"] = str(sets)
        counts[split] = len(rows)
    if len(pairs_per_set) != 1:
        raise ValueError(f"{dataset}: its sets give {sorted(pairs_per_set)} untied pairs; the bench needs one number")
    per_set = pairs_per_set.pop()
    return {"files": files, "sets": counts, "pairs": {split: n * per_set for split, n in counts.items()},
            "k": cfg.sets.k, "pairs_per_set": per_set, "batch_size": cfg.sets.batch_size * per_set,
            "pad_token_id": dm.tokenizer.pad_token_id, "backbone": backbone, "packing": dm.packing,
            "dropped_over_max_length": dm.stats["train"]["dropped"],
            "prompt_tokens_per_set": tokens["prompt"] / counts["train"],
            "response_tokens_per_set": tokens["responses"] / counts["train"]}


def per_set(result: dict, data: dict, impl: str) -> dict:
    """A leg's speeds per set and per response (and pairs/s at the same information for rmlab_sets), and
    how often its layout computes a set's prompt: once for a packed set, K times for K padded rows,
    once per pair for a packed pair and twice per pair otherwise."""
    k, pairs = data["k"], data["pairs_per_set"]
    if "sets_per_s" not in result:
        result["sets_per_s"] = result["pairs_per_s"] / pairs
        result["responses_per_s"] = result["sets_per_s"] * k
    else:
        result["pairs_per_s"] = result["sets_per_s"] * pairs
    packed = data["packing"] == "shared_prompt" and impl in ("rmlab", "rmlab_sets")
    result["prompt_passes_per_set"] = (1 if packed else k) if impl == "rmlab_sets" else pairs * (1 if packed else 2)
    result["tokens_per_set"] = result["tokens_per_s"] / result["sets_per_s"]
    return result


def set_table(results: list[dict]) -> list[str]:
    """The report's table of the set datasets' legs."""
    lines = ["| model | data | precision | impl | sets/s | responses/s | pairs/s | prompt passes per set | "
             "tokens per set | tokens/s | padding | MFU | peak RSS MB | eval acc (pairs) | rmlab_sets speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['data']} (K={r['k']}) | {r['precision']} | {r['impl']} | {r['sets_per_s']:.3f} | "
                     f"{r['responses_per_s']:.2f} | {r['pairs_per_s']:.2f} | {r['prompt_passes_per_set']:g} | "
                     f"{r['tokens_per_set']:.0f} | {r['tokens_per_s']:.0f} | {r['padding_fraction']:.1%} | {r['mfu']:.1%} | "
                     f"{r['peak_rss_mb']:.0f} | {r['eval_acc']:.3f} ({r['eval_pairs']}) | {r['speedup']} |")
    return lines


def describe(results: list[dict]) -> list[str]:
    """What a set table's rows measured."""
    lines = []
    for r in results:
        if r["impl"] == "rmlab_sets":
            lines.append(f"- {r['data']} for {r['model']}: {r['train_sets']} train sets of K={r['k']}, {r['pairs_per_set']} "
                         f"untied pairs each; {r['sets_per_step']} sets a step for rmlab_sets, "
                         f"{r['sets_per_step'] * r['pairs_per_set']} pairs a step for the pair legs; "
                         f"mean tokens per set: prompt {r['prompt_tokens_per_set']:.0f}, responses {r['response_tokens_per_set']:.0f}")
    return lines
