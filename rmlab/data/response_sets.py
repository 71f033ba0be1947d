"""Response sets: one prompt and K >= 2 responses with a gold score each (higher is better, equal
scores are ties). A pair is the set K = 2 with scores (1, 0).

Row layouts read by `to_response_set` (column names set by `columns`):
- scores:    {"prompt", "responses": [str, ...], "scores": [float, ...]}; a score may be a dict of
             attribute scores (HelpSteer style), combined by `score_key` or `score_weights`;
- ranking:   {"prompt", "responses", "ranking": [index of the best, next, ...]};
- chosen/rejected lists (RewardBench 2): {"prompt", "chosen": str | [str], "rejected": [str, ...]},
             chosen scored 1 (ties among them allowed), rejected 0.

`alpacaeval_sets` groups the AlpacaEval pairs of ../shared/data (every output of a prompt judged
against one reference output) into such sets:
`python -m rmlab.data.response_sets alpacaeval <pairs.jsonl.gz> <sets.jsonl.gz>`.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
from collections import Counter
from typing import Any, Iterable, Mapping

from rmlab.data.formats import FLOAT32_MAX, PairFormatError, _as_messages

SET_COLUMNS = {"prompt": "prompt", "responses": "responses", "scores": "scores", "ranking": "ranking",
               "chosen": "chosen", "rejected": "rejected"}


def _score(value: Any, number: int, score_key: str | None, score_weights: Mapping[str, float] | None) -> float:
    """One response's gold score: a number, or a dict of attribute scores reduced by key or weights."""
    if isinstance(value, Mapping):
        if score_weights:
            missing = sorted(set(score_weights) - set(value))
            if missing:
                raise PairFormatError(f"score {number} has no attribute {missing[0]!r} (it has {sorted(value)})")
            value = sum(weight * _score(value[key], number, None, None) for key, weight in score_weights.items())
        elif score_key:
            if score_key not in value:
                raise PairFormatError(f"score {number} has no attribute {score_key!r} (it has {sorted(value)})")
            value = value[score_key]
        else:
            raise PairFormatError(f"score {number} is a dict of attributes {sorted(value)}: choose one with "
                                  "data.score_key or combine them with data.score_weights")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PairFormatError(f"score {number} is not a number: {value!r}")
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise PairFormatError(f"score {number} is {value}, not a finite float32 number")
    return float(value)


def to_response_set(row: Mapping[str, Any], columns: Mapping[str, str] = SET_COLUMNS, score_key: str | None = None,
                    score_weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """{prompt: messages, responses: [str], scores: [float]} of one row, in any layout above.

    Raises PairFormatError (the DataModule names file and line) for a missing or mistyped column, fewer
    than two responses, an empty response, responses that are all the same text, scores that do not
    match the responses or are not finite numbers, and a ranking that is not a permutation."""
    if not isinstance(row, Mapping):
        raise PairFormatError(f"expected an object with named fields, got {type(row).__name__}")
    if row.get(columns["prompt"]) is None:
        raise PairFormatError(f"missing {columns['prompt']!r}")
    prompt = _as_messages(row[columns["prompt"]], f"column {columns['prompt']!r}")
    if row.get(columns["responses"]) is not None:
        responses = row[columns["responses"]]
        if not isinstance(responses, list):
            raise PairFormatError(f"column {columns['responses']!r} must be a list of responses")
        if row.get(columns["scores"]) is not None:
            given = row[columns["scores"]]
            if not isinstance(given, list) or len(given) != len(responses):
                raise PairFormatError(f"column {columns['scores']!r} must give one score per response ({len(responses)})")
            scores = [_score(v, i, score_key, score_weights) for i, v in enumerate(given, start=1)]
        elif row.get(columns["ranking"]) is not None:
            ranking = row[columns["ranking"]]
            if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))):
                raise PairFormatError(f"column {columns['ranking']!r} must list every response index once, best first")
            scores = [0.0] * len(responses)
            for position, index in enumerate(ranking):
                scores[index] = float(len(responses) - 1 - position)
        else:
            raise PairFormatError(f"responses without {columns['scores']!r} or {columns['ranking']!r}")
    elif row.get(columns["chosen"]) is not None and row.get(columns["rejected"]) is not None:
        chosen, rejected = (row[columns[side]] for side in ("chosen", "rejected"))
        chosen = [chosen] if isinstance(chosen, str) else chosen
        rejected = [rejected] if isinstance(rejected, str) else rejected
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise PairFormatError(f"{columns['chosen']!r} and {columns['rejected']!r} must be strings or lists of strings")
        responses, scores = chosen + rejected, [1.0] * len(chosen) + [0.0] * len(rejected)
    else:
        raise PairFormatError(f"expected {columns['responses']!r} with {columns['scores']!r} or {columns['ranking']!r}, "
                              f"or {columns['chosen']!r} and {columns['rejected']!r} lists")
    if len(responses) < 2:
        raise PairFormatError(f"a response set needs at least 2 responses, got {len(responses)}")
    for number, response in enumerate(responses, start=1):
        if not isinstance(response, str) or not response.strip():
            raise PairFormatError(f"response {number} is " + ("empty" if isinstance(response, str) else
                                                             f"a {type(response).__name__}, not a string"))
    if len(set(responses)) == 1:
        raise PairFormatError(f"all {len(responses)} responses are the same text")
    return {"prompt": prompt, "responses": list(responses), "scores": scores}


def alpacaeval_sets(pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """AlpacaEval pairs grouped into one response set per (prompt, judge): each judge compared every
    output of a prompt with one reference output, which is the model present in all of the group's
    pairs. The gold score of an output is its judged win probability against the reference
    (judge_confidence when it won, 1 - judge_confidence when it lost); the reference scores 0.5.

    Raises ValueError for a group whose pairs share no model (not a reference design)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for pair in pairs:
        groups.setdefault((pair["prompt"], pair["judge"]), []).append(pair)
    sets = []
    for (prompt, judge), members in groups.items():
        reference, count = Counter(m for p in members for m in (p["chosen_model"], p["rejected_model"])).most_common(1)[0]
        if count != len(members):
            raise ValueError(f"{prompt[:60]!r} ({judge}): no model is in all {len(members)} pairs, so there is no reference")
        first = members[0]
        outputs = {reference: (first["chosen"] if first["chosen_model"] == reference else first["rejected"], 0.5)}
        for p in members:
            won = p["rejected_model"] == reference
            model, text = (p["chosen_model"], p["chosen"]) if won else (p["rejected_model"], p["rejected"])
            outputs[model] = (text, p["judge_confidence"] if won else 1.0 - p["judge_confidence"])
        models = sorted(outputs)
        sets.append({"prompt": prompt, "responses": [outputs[m][0] for m in models], "scores": [outputs[m][1] for m in models],
                     "models": models, "reference_model": reference, "judge": judge})
    return sets


def main(argv: list[str]) -> None:
    """`alpacaeval <pairs.jsonl[.gz]> <sets.jsonl[.gz]>`: write alpacaeval_sets of the pairs file."""
    if len(argv) != 3 or argv[0] != "alpacaeval":
        raise SystemExit("usage: python -m rmlab.data.response_sets alpacaeval <pairs.jsonl[.gz]> <sets.jsonl[.gz]>")
    opener = lambda path, mode: gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)  # noqa: E731
    with opener(argv[1], "rt") as source:
        sets = alpacaeval_sets(json.loads(line) for line in source if line.strip())
    with opener(argv[2], "wt") as out:
        for response_set in sets:
            out.write(json.dumps(response_set, ensure_ascii=False) + "\n")
    sizes = Counter(len(s["responses"]) for s in sets)
    print(f"{len(sets)} response sets from {argv[1]} -> {argv[2]} (responses per set: {min(sizes)}..{max(sizes)})")


if __name__ == "__main__":
    main(sys.argv[1:])
