"""Response sets -> token ids, with the over-length and same-ids rules of pairs (the DataModule's set mode).

Each set (read by rmlab.data.set_reader.read_sets: prompt, responses, scores, origin, ...) becomes
`input_ids` (K token lists, prompt + response each, the prompt cut once for all: tokenize_set) and
`response_tokens`. Over-long sets follow data.overlong (truncate: counted; drop: counted and left
out). Two responses with different scores that tokenize to the same ids (emoji read as the unknown
token, spacing normalised away) make the set a bad row, like a pair whose chosen and rejected become
the same ids: data.on_bad_row=error stops with its origin, skip counts it under `same_ids`.
"""

from __future__ import annotations

import logging
from typing import Any

from datasets import Dataset
from jinja2 import TemplateError

from rmlab.data.formats import template_messages
from rmlab.data.rows import bad_row
from rmlab.data.tokenize import tokenize_set
from rmlab.errors import DataError

log = logging.getLogger(__name__)


def tokenize_set_row(row: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """tokenize_set of one stored set, plus `same_ids`: two responses with different scores and the
    same ids. Raises DataError naming the set's origin when its chat template cannot render it."""
    try:
        out = tokenize_set(template_messages(row["prompt"]), row["responses"], **settings)
    except (ValueError, TypeError, TemplateError) as error:
        raise DataError(f"{row.get('origin', 'a set')}: cannot be tokenized ({type(error).__name__}: {error}). "
                        "If the chat template is at fault, data.chat_template=false renders chats as plain text") from None
    ids, scores = out["input_ids"], row["scores"]
    out["same_ids"] = any(ids[i] == ids[j] and scores[i] != scores[j] for i in range(len(ids)) for j in range(i))
    return out


def tokenize_sets(sets: Dataset, split: str, settings: dict[str, Any], on_bad_row: str,
                  read_stats: dict[str, int]) -> tuple[Dataset, dict[str, int], list[dict]]:
    """(the kept sets with input_ids, response_tokens and an `index` column; the split's stats; the
    sets set aside as bad rows). `settings`: tokenize_set's tokenizer, max_length, overlong,
    chat_template, frame. Raises DataError for a same-ids set under on_bad_row=error, or when no set is
    left. A counterfactual set of data.augment whose rewrite reads as the original is no bad row: it is
    set aside whatever the policy, counted as `augment_set_aside` and logged."""
    tokenized = sets.map(tokenize_set_row, fn_kwargs=settings, desc=f"tokenizing {split}")
    kept = tokenized.filter(lambda keep: keep, input_columns="keep")
    same = [i for i, flag in enumerate(kept["same_ids"]) if flag]
    made = [i for i in same if kept[i].get("augment")]  # counterfactual sets (data.augment): rmlab's own, not bad rows
    rejects = []
    for i in sorted(set(same) - set(made)):
        row = kept[i]
        problem = ("two responses with different scores become the same token ids (the tokenizer reads them alike), "
                   "so the set contradicts itself")
        bad_row(on_bad_row, row["origin"], problem)
        rejects.append({"split": split, "origin": row["origin"], "reason": "same_ids", "problem": problem,
                        "row": {k: row[k] for k in ("responses", "scores")}})
    if rejects:
        log.warning("%s: %d sets set aside whose responses of different scores tokenize to the same ids (first: %s)",
                    split, len(rejects), rejects[0]["origin"])
    if made:
        log.warning("%s: %d counterfactual sets set aside: the rewrite reads as the same token ids as the response it "
                    "rewrites (its edit falls past data.max_length=%d, or the tokenizer reads it alike; first: %s)",
                    split, len(made), settings["max_length"], kept[made[0]]["origin"])
    if same:
        kept = kept.select(sorted(set(range(len(kept))) - set(same)))
    kept = kept.add_column("index", list(range(len(kept))))
    stats = {
        "sets": len(kept),
        "responses": sum(len(r) for r in kept["responses"]),
        "k_min": min(map(len, kept["responses"]), default=0), "k_max": max(map(len, kept["responses"]), default=0),
        "all_tied": read_stats.get("all_tied", 0),
        "truncated_prompt": sum(tokenized["prompt_truncated"]),
        "truncated_response": sum(tokenized["response_truncated"]),
        "dropped": len(tokenized) - len(kept) - len(same),
        "rejected": read_stats.get("rejected", 0) + len(same) - len(made),
        "same_ids": len(same) - len(made),
        "augment_set_aside": len(made),
        "unknown_responses": sum(kept["unknown_responses"]),
        "unrendered_tool_calls": sum(kept["unrendered_tool_calls"]),
    }
    log.info("%s: %s (max_length=%d, overlong=%s)", split, stats, settings["max_length"], settings["overlong"])
    if len(kept) == 0:
        raise DataError(f"{split}: no response set left: {stats['dropped']} longer than data.max_length="
                        f"{settings['max_length']} (data.overlong={settings['overlong']}), {len(same)} whose responses "
                        f"tokenize alike, {read_stats.get('rejected', 0)} bad rows. Give this split more sets")
    return kept, stats, rejects
