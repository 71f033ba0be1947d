"""Response sets: one prompt and K >= 2 responses with a gold score each (higher is better, equal
scores are ties). A pair is the set K = 2 with scores (1, 0).

Row layouts (`data.format`; column names set by `data.columns`, defaults in SET_COLUMNS):
- `sets_scores`: {"prompt", "responses": [...], "scores": [float, ...]}. A score may be a dict of
  attribute scores (HelpSteer style), reduced by `score_key` (a dotted path such as
  "helpfulness.Rating") or `score_weights`. The responses may instead be objects that carry their own
  text and score (UltraFeedback's `completions`): `columns.response_text` and `columns.response_score`
  name those fields;
- `sets_ranking`: {"prompt", "responses", "ranking": [index of the best, next, ...]};
- `sets_chosen_rejected` (RewardBench 2): {"prompt", "chosen": str | [str], "rejected": [str, ...]},
  chosen scored 1 (ties among them allowed), rejected 0;
- `sets_from_rows` (HelpSteer 2): one response per row, {"prompt", "response", "score"}; the rows of
  one prompt form a set (rmlab.data.set_reader groups them). With `columns.score` null the row's own
  columns are the attribute scores that `score_key` / `score_weights` read.
A response is a string, a final assistant message {role: assistant, content}, or a whole
conversation ending in the assistant's reply (then what comes before the reply is the prompt).
A score is a number, or a string holding one (CSV).

A row that is not a usable set raises SetFormatError with a short `reason` (REASONS), so that
skipped rows are counted per reason.

`alpacaeval_sets` groups the AlpacaEval pairs of ../shared/data (every output of a prompt judged
against one reference output) into such sets:
`python -m rmlab.data.response_sets alpacaeval <pairs.jsonl.gz> <sets.jsonl.gz>`;
`expand_to_pairs` turns a set into its preference pairs, as trainers that take only pairs need them:
`python -m rmlab.data.response_sets pairs <sets file> <pairs.jsonl.gz>`.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from rmlab.data.files import read_file_rows
from rmlab.data.formats import FLOAT32_MAX, ROLES, PairFormatError, _as_messages, _same_turn

SET_FORMATS = ("sets_scores", "sets_ranking", "sets_chosen_rejected", "sets_from_rows")
SET_COLUMNS = {"prompt": "prompt", "responses": "responses", "scores": "scores", "ranking": "ranking",
               "chosen": "chosen", "rejected": "rejected", "response_text": None, "response_score": None,
               "response": "response", "score": "score"}
REASONS = {  # why a row is not a usable response set: the key skipped rows are counted under
    "unreadable": "the file reader could not read the row (not JSON, not UTF-8, extra CSV fields) or it is not an object",
    "missing_column": "a column the layout needs is missing or null",
    "bad_prompt": "the prompt is not a string or a list of chat messages",
    "bad_response": "a response is not a string, an assistant message or a conversation ending in one",
    "empty_response": "a response is empty or whitespace only",
    "too_few_responses": "fewer than 2 responses",
    "identical_responses": "every response is the same text",
    "duplicate_responses": "one text is given two different scores",
    "count_mismatch": "the scores (or ranking) do not give one entry per response",
    "missing_score": "a score is missing (null)",
    "bad_score": "a score is not a number, or attribute scores without data.score_key / data.score_weights",
    "nonfinite_score": "a score is NaN or infinite",
    "score_beyond_float32": "a score is finite but beyond float32's largest value, which training computes in",
    "bad_ranking": "the ranking is not a permutation of the response indices",
    "no_reference": "AlpacaEval pairs of one prompt and judge that share no reference output",
}


class SetFormatError(PairFormatError):
    """A row that cannot be read as a response set; `reason` is one of REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def set_columns(columns: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """SET_COLUMNS with the given names in place (data.columns may name only some)."""
    unknown = sorted(set(columns or {}) - set(SET_COLUMNS) - {"margin"})  # margin: the pair key data.columns also holds
    if unknown:
        raise ValueError(f"unknown data.columns.{unknown[0]} for response sets; known: {sorted(SET_COLUMNS)}")
    return {**SET_COLUMNS, **{k: v for k, v in (columns or {}).items() if k in SET_COLUMNS}}


def detect_set_format(row: Mapping[str, Any], columns: Mapping[str, str | None] = SET_COLUMNS) -> str:
    """The set layout of a row, from its columns. Raises SetFormatError (missing_column) when none fits."""
    columns = set_columns(columns)
    if row.get(columns["responses"]) is not None:
        if row.get(columns["scores"]) is not None or columns["response_score"]:
            return "sets_scores"
        if row.get(columns["ranking"]) is not None:
            return "sets_ranking"
    chosen, rejected = row.get(columns["chosen"]), row.get(columns["rejected"])
    if chosen is not None and rejected is not None and (_is_text_list(chosen) or _is_text_list(rejected)):
        return "sets_chosen_rejected"
    if row.get(columns["response"]) is not None and row.get(columns["score"]) is not None:
        return "sets_from_rows"
    raise SetFormatError("missing_column", (
        f"cannot detect the response-set layout from columns {sorted(row)}; expected {columns['responses']!r} with "
        f"{columns['scores']!r} or {columns['ranking']!r}, {columns['chosen']!r} and {columns['rejected']!r} lists of "
        f"strings, or one {columns['response']!r} and {columns['score']!r} per row. Set data.columns.* or data.format "
        f"to one of {SET_FORMATS}"))


def is_set_row(row: Any, columns: Mapping[str, str | None] | None = None) -> bool:
    """Whether a row (the first readable one of a split) is a response set rather than a pair: for
    data.format=auto, to choose between read_sets and the pair path. The layouts do not overlap: a
    pair's chosen/rejected are strings or chat-message lists, a set's are lists of strings."""
    try:
        detect_set_format(row, set_columns(columns))
    except (SetFormatError, AttributeError):  # AttributeError: not a mapping
        return False
    return True


def _is_text_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _lookup(value: Any, path: str, what: str) -> Any:
    """value[a][b]... for the dotted path "a.b" (a field name without dots is one step)."""
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            fields = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise SetFormatError("missing_score", f"{what} has no attribute {path!r} ({part!r} not in {fields})")
        value = value[part]
    return value


def read_score(value: Any, what: str, score_key: str | None = None, score_weights: Mapping[str, float] | None = None) -> float:
    """One gold score: a number (or a string holding one), or a dict of attribute scores reduced by
    `score_key` (a dotted path) or by `score_weights` (sum of weight x attribute).

    Raises SetFormatError: missing_score, bad_score, nonfinite_score, score_beyond_float32."""
    if isinstance(value, Mapping):
        if score_weights:
            return sum(weight * read_score(_lookup(value, key, what), f"{what} attribute {key!r}")
                       for key, weight in score_weights.items())
        if not score_key:
            raise SetFormatError("bad_score", f"{what} is a dict of attributes {sorted(value)}: choose one with "
                                              "data.score_key or combine them with data.score_weights")
        return read_score(_lookup(value, score_key, what), f"{what} attribute {score_key!r}")
    if value is None:
        raise SetFormatError("missing_score", f"{what} is missing")
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise SetFormatError("bad_score", f"{what} is not a number: {value!r}")
    if not math.isfinite(number):
        raise SetFormatError("nonfinite_score", f"{what} is {number}, not a finite number")
    if abs(number) > FLOAT32_MAX:
        raise SetFormatError("score_beyond_float32", f"{what} is {number:g}, beyond float32's largest value "
                                                     f"({FLOAT32_MAX:.4g}), which training computes in")
    return float(number)


def split_turns(text: str, markers: Mapping[str, str]) -> list[dict[str, str]]:
    """A prompt string that holds earlier turns behind role markers, as chat messages. HelpSteer 2's
    multi-turn prompts read "{user 1}\n<extra_id_1>Assistant\n{assistant 1}\n<extra_id_1>User\n{user 2}":
    markers {user: "<extra_id_1>User", assistant: "<extra_id_1>Assistant"}. Text before the first
    marker is a user turn; each turn is stripped of surrounding whitespace.

    Raises SetFormatError (bad_prompt) for a marker role that chat templates do not know."""
    unknown = sorted(set(markers) - set(ROLES))
    if unknown:
        raise SetFormatError("bad_prompt", f"turn marker role {unknown[0]!r} is not one of {ROLES}")
    role_of = {marker: role for role, marker in markers.items()}
    pattern = re.compile("|".join(re.escape(marker) for marker in sorted(role_of, key=len, reverse=True)))
    messages, role, start = [], "user", 0
    for match in pattern.finditer(text):
        if match.start() > start or messages:
            messages.append({"role": role, "content": text[start:match.start()].strip()})
        role, start = role_of[match.group()], match.end()
    messages.append({"role": role, "content": text[start:].strip()})
    return messages


def _prompt(value: Any, column: str, turn_markers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    if turn_markers and isinstance(value, str):
        value = split_turns(value, turn_markers)
    try:
        return _as_messages(value, f"column {column!r}")
    except PairFormatError as err:
        raise SetFormatError("bad_prompt", str(err)) from None


def _reply(value: Any, number: int, text_field: str | None) -> tuple[str, list[dict[str, Any]] | None]:
    """(text, context) of one response; context is the conversation before the reply, or None."""
    what = f"response {number}"
    if isinstance(value, Mapping) and "role" not in value:
        if not text_field:
            raise SetFormatError("bad_response", f"{what} is an object with fields {sorted(value)}: name the field "
                                                 "holding its text with data.columns.response_text")
        if text_field not in value:
            raise SetFormatError("missing_column", f"{what} has no field {text_field!r} (it has {sorted(value)})")
        value = value[text_field]
    context = None
    if isinstance(value, (Mapping, list)):
        try:
            messages = _as_messages([value] if isinstance(value, Mapping) else value, what)
        except PairFormatError as err:
            raise SetFormatError("bad_response", str(err)) from None
        if messages[-1]["role"] != "assistant" or not isinstance(messages[-1]["content"], str):
            raise SetFormatError("bad_response", f"{what} does not end with an assistant message with text content")
        context, value = messages[:-1], messages[-1]["content"]
    if not isinstance(value, str):
        raise SetFormatError("bad_response", f"{what} is a {type(value).__name__}, not a string")
    if not value.strip():
        raise SetFormatError("empty_response", f"{what} is empty" + (" (whitespace only)" if value else ""))
    return value, context or None


def _replies(values: list[Any], prompt: list[dict[str, Any]] | None, columns: Mapping[str, str | None]
             ) -> tuple[list[dict[str, Any]], list[str]]:
    """The prompt and the reply texts of a row's responses; conversations must share their context,
    which must be the prompt column's messages when there is one."""
    replies = [_reply(value, number, columns["response_text"]) for number, value in enumerate(values, start=1)]
    for number, (_, context) in enumerate(replies, start=1):
        if context is None:
            continue
        if prompt is None:
            prompt = context
        elif len(context) != len(prompt) or not all(_same_turn(a, b) for a, b in zip(context, prompt)):
            raise SetFormatError("bad_response", f"response {number}: the conversation before its reply is not the "
                                                 f"prompt ({(prompt[-1]['content'] or '')[:60]!r})")
    if prompt is None:
        raise SetFormatError("missing_column", f"missing {columns['prompt']!r}")
    return prompt, [text for text, _ in replies]


def check_set(responses: list[str], scores: list[float]) -> None:
    """Refuse a set that cannot teach a preference: fewer than 2 responses, all the same text, or one
    text with two different scores (a pair whose chosen and rejected are the same text)."""
    if len(responses) < 2:
        raise SetFormatError("too_few_responses", f"a response set needs at least 2 responses, got {len(responses)}")
    if len(set(responses)) == 1:
        raise SetFormatError("identical_responses", f"all {len(responses)} responses are the same text")
    first: dict[str, int] = {}
    for index, (response, score) in enumerate(zip(responses, scores)):
        if response in first and scores[first[response]] != score:
            raise SetFormatError("duplicate_responses", f"responses {first[response] + 1} and {index + 1} are the same "
                                                        f"text with different scores ({scores[first[response]]}, {score})")
        first.setdefault(response, index)


def to_response_set(row: Mapping[str, Any], columns: Mapping[str, str | None] | None = None, score_key: str | None = None,
                    score_weights: Mapping[str, float] | None = None, fmt: str = "auto",
                    turn_markers: Mapping[str, str] | None = None) -> dict[str, Any]:
    """{prompt: messages, responses: [str], scores: [float]} of one row in a layout above (`fmt`, or
    detected from this row with "auto"). A `sets_from_rows` row gives one response and one score:
    group such rows with rmlab.data.set_reader. `turn_markers` splits a prompt string into chat
    turns (split_turns).

    Raises SetFormatError (a PairFormatError; the reader names file and line) with one of REASONS."""
    if not isinstance(row, Mapping):
        raise SetFormatError("unreadable", f"expected an object with named fields, got {type(row).__name__}")
    columns = set_columns(columns)
    fmt = detect_set_format(row, columns) if fmt == "auto" else fmt
    if fmt not in SET_FORMATS:
        raise ValueError(f"unknown response-set format {fmt!r}; choose one of {SET_FORMATS} or 'auto'")
    given = row.get(columns["prompt"])
    prompt = _prompt(given, columns["prompt"], turn_markers) if given is not None else None
    if fmt == "sets_from_rows":  # columns.score=null: the row's columns are the attributes score_key/score_weights read
        if row.get(columns["response"]) is None:
            raise SetFormatError("missing_column", f"missing {columns['response']!r}")
        score = row if columns["score"] is None else row.get(columns["score"])
        if score is None:
            raise SetFormatError("missing_score", f"missing {columns['score']!r}")
        prompt, (response,) = _replies([row[columns["response"]]], prompt, columns)
        return {"prompt": prompt, "responses": [response], "scores": [read_score(score, "the score", score_key, score_weights)]}
    if fmt == "sets_chosen_rejected":
        sides = {}
        for side in ("chosen", "rejected"):
            value = row.get(columns[side])
            if value is None:
                raise SetFormatError("missing_column", f"missing {columns[side]!r}")
            sides[side] = [value] if isinstance(value, str) else value
            if not isinstance(sides[side], list):
                raise SetFormatError("bad_response", f"{columns[side]!r} must be a string or a list of responses")
        prompt, responses = _replies(sides["chosen"] + sides["rejected"], prompt, columns)
        scores = [1.0] * len(sides["chosen"]) + [0.0] * len(sides["rejected"])
    else:
        values = row.get(columns["responses"])
        if values is None:
            raise SetFormatError("missing_column", f"missing {columns['responses']!r}")
        if not isinstance(values, list):
            raise SetFormatError("bad_response", f"column {columns['responses']!r} must be a list of responses")
        prompt, responses = _replies(values, prompt, columns)
        scores = _scores(row, values, fmt, columns, score_key, score_weights)
    check_set(responses, scores)
    return {"prompt": prompt, "responses": responses, "scores": scores}


def _scores(row: Mapping[str, Any], responses: list[Any], fmt: str, columns: Mapping[str, str | None],
            score_key: str | None, score_weights: Mapping[str, float] | None) -> list[float]:
    """One gold score per response: from the scores column, the responses' own score field, or the ranking."""
    if fmt == "sets_ranking":
        ranking = row.get(columns["ranking"])
        if ranking is None:
            raise SetFormatError("missing_column", f"missing {columns['ranking']!r}")
        if not isinstance(ranking, list) or len(ranking) != len(responses):
            raise SetFormatError("count_mismatch", f"column {columns['ranking']!r} must list each of the "
                                                   f"{len(responses)} responses once, best first")
        if any(type(i) is not int for i in ranking) or sorted(ranking) != list(range(len(responses))):
            raise SetFormatError("bad_ranking", f"column {columns['ranking']!r} must list every response index "
                                                f"(0..{len(responses) - 1}) once, best first; got {ranking}")
        scores = [0.0] * len(responses)
        for position, index in enumerate(ranking):
            scores[index] = float(len(responses) - 1 - position)
        return scores
    if columns["response_score"]:
        given = [_lookup(r, columns["response_score"], f"response {n}") if isinstance(r, Mapping) and "role" not in r
                 else None for n, r in enumerate(responses, start=1)]
    else:
        given = row.get(columns["scores"])
        if given is None:
            raise SetFormatError("missing_column", f"missing {columns['scores']!r}")
        if not isinstance(given, list) or len(given) != len(responses):
            count = len(given) if isinstance(given, list) else type(given).__name__
            raise SetFormatError("count_mismatch", f"column {columns['scores']!r} must give one score per response "
                                                   f"({len(responses)}), got {count}")
    return [read_score(value, f"score {number}", score_key, score_weights) for number, value in enumerate(given, start=1)]


def alpacaeval_groups(pairs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """AlpacaEval pairs by (prompt, judge), in order of first appearance."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for pair in pairs:
        groups.setdefault((pair["prompt"], pair["judge"]), []).append(pair)
    return groups


def alpacaeval_set(members: list[Mapping[str, Any]]) -> dict[str, Any]:
    """One response set from the AlpacaEval pairs of one (prompt, judge): the judge compared every
    output of the prompt with one reference output, the model present in all of the group's pairs.
    The gold score of an output is its judged win probability against the reference
    (judge_confidence when it won, 1 - judge_confidence when it lost); the reference scores 0.5.

    Raises SetFormatError (no_reference) for a group whose pairs share no model (not a reference design)."""
    first = members[0]
    reference, count = Counter(m for p in members for m in (p["chosen_model"], p["rejected_model"])).most_common(1)[0]
    if count != len(members):
        raise SetFormatError("no_reference", f"{first['prompt'][:60]!r} ({first['judge']}): no model is in all "
                                             f"{len(members)} pairs, so there is no reference")
    outputs = {reference: (first["chosen"] if first["chosen_model"] == reference else first["rejected"], 0.5)}
    for p in members:
        won = p["rejected_model"] == reference
        model, text = (p["chosen_model"], p["chosen"]) if won else (p["rejected_model"], p["rejected"])
        outputs[model] = (text, p["judge_confidence"] if won else 1.0 - p["judge_confidence"])
    models = sorted(outputs)
    return {"prompt": first["prompt"], "responses": [outputs[m][0] for m in models], "scores": [outputs[m][1] for m in models],
            "models": models, "reference_model": reference, "judge": first["judge"]}


def alpacaeval_sets(pairs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """AlpacaEval pairs grouped into one response set per (prompt, judge) (alpacaeval_set).

    Raises SetFormatError (a ValueError) for a group without a reference."""
    return [alpacaeval_set(members) for members in alpacaeval_groups(pairs).values()]


def expand_to_pairs(response_set: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Every preference pair of a set ({prompt, responses, scores} as to_response_set gives it): for
    responses i < j with different scores, {prompt, chosen, rejected, score_gap} (score_gap >= 0, for
    data.columns.margin). Returns the pairs and the number of tied pairs, which a pair cannot hold.
    K responses give up to K(K-1)/2 pairs: what trainers that take only pairs train on."""
    prompt, responses, scores = response_set["prompt"], response_set["responses"], response_set["scores"]
    pairs, ties = [], 0
    for i in range(len(responses)):
        for j in range(i + 1, len(responses)):
            if scores[i] == scores[j]:
                ties += 1
                continue
            better, worse = (i, j) if scores[i] > scores[j] else (j, i)
            pairs.append({"prompt": prompt, "chosen": responses[better], "rejected": responses[worse],
                          "score_gap": scores[better] - scores[worse]})
    return pairs, ties


def _opener(path: str, mode: str):
    return gzip.open(path, mode) if path.endswith(".gz") else open(path, mode)


def _write_pairs(source: str, target: str) -> None:
    """Every preference pair of every set of a file, each with the line of its set (`set_origin`)."""
    sets = pairs = ties = 0
    with _opener(target, "wt") as out:
        for row in read_file_rows(source):
            try:
                if row.problem is not None:
                    raise SetFormatError("unreadable", row.problem)
                expanded, tied = expand_to_pairs(to_response_set(row.data))
            except SetFormatError as err:
                raise SystemExit(f"{source} {row.location}: {err}") from None
            for pair in expanded:
                out.write(json.dumps({**pair, "set_origin": row.location}, ensure_ascii=False) + "\n")
            sets, pairs, ties = sets + 1, pairs + len(expanded), ties + tied
    print(f"{pairs} pairs from {sets} response sets in {source} -> {target} ({ties} tied pairs left out)")


USAGE = ("usage: python -m rmlab.data.response_sets alpacaeval <pairs.jsonl[.gz]> <sets.jsonl[.gz]> [judge=<name>|judge=all]\n"
         "       python -m rmlab.data.response_sets pairs <sets file> <pairs.jsonl[.gz]>")
DEFAULT_JUDGE = "weighted_alpaca_eval_gpt4_turbo"  # as conf/data/alpacaeval_sets.yaml: graded win probabilities


def main(argv: list[str]) -> None:
    """`alpacaeval <pairs> <sets> [judge=...]`: write alpacaeval_sets of an AlpacaEval pairs file, one judge's
    verdicts (DEFAULT_JUDGE, the same sets as data=alpacaeval_sets; judge=all keeps every judge's);
    `pairs <sets> <pairs>`: write every preference pair of a sets file (expand_to_pairs)."""
    judges = [arg.split("=", 1)[1] for arg in argv if arg.startswith("judge=")]
    argv = [arg for arg in argv if not arg.startswith("judge=")]
    if len(argv) != 3 or argv[0] not in ("alpacaeval", "pairs") or len(judges) > 1 or (judges and argv[0] == "pairs"):
        raise SystemExit(USAGE)
    if argv[0] == "pairs":
        _write_pairs(argv[1], argv[2])
        return
    judge = judges[0] if judges else DEFAULT_JUDGE
    with _opener(argv[1], "rt") as source:
        pairs = [json.loads(line) for line in source if line.strip()]
    kept = [pair for pair in pairs if judge == "all" or pair.get("judge") == judge]
    if not kept:
        raise SystemExit(f"{argv[1]}: no pair judged by {judge!r}; its judges: {sorted({str(p.get('judge')) for p in pairs})} "
                         "(judge=all keeps every judge's)")
    sets = alpacaeval_sets(kept)
    with _opener(argv[2], "wt") as out:
        for response_set in sets:
            out.write(json.dumps(response_set, ensure_ascii=False) + "\n")
    sizes = Counter(len(s["responses"]) for s in sets)
    print(f"{len(sets)} response sets from {argv[1]} -> {argv[2]} (judge {judge}; responses per set: "
          f"{min(sizes)}..{max(sizes)})")


if __name__ == "__main__":
    main(sys.argv[1:])
