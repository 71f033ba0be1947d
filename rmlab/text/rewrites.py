"""Counterfactual rewrites of a response, shared by the adversarial probes (rmlab.diagnostics.probes)
and the training-time augmentation (rmlab.data.augment).

Only rewrites that add no text of their own live here (a changed number, a negation, a cut, another
prompt's answer), so augmentation can reuse them without teaching a probe's phrases. Each rewrite
is `(text, rng, pair, pool) -> new text, or None when it does not apply`.

TARGETS says, for every kind of rewrite, which answer of a pair it changes and what that makes of it:
a `flaw` (the chosen, good answer made worse) or an `inflation` (the rejected answer dressed up).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

# (text, rng, pair, pool) -> rewritten text, or None when the rewrite does not apply.
Rewrite = Callable[[str, random.Random, dict, list], str | None]

# kind -> (the answer it rewrites, flaw | inflation); the probes and the augmentation read this one table.
TARGETS: dict[str, tuple[str, str]] = {
    "wrong_number": ("chosen", "flaw"),
    "negation": ("chosen", "flaw"),
    "insult": ("chosen", "flaw"),
    "truncate": ("chosen", "flaw"),
    "repetition": ("chosen", "flaw"),
    "off_topic": ("chosen", "flaw"),
    "filler": ("rejected", "inflation"),
    "markdown": ("rejected", "inflation"),
    "sycophancy": ("rejected", "inflation"),
}

NUMBER = re.compile(r"(?<!\w)\d+(?:[.,]\d+)*(?!\w)")
# A sentence runs to its final punctuation (before a space or the end) or to the end of its line.
SENTENCE = re.compile(r"\S.*?(?:[.!?]+(?=\s|$)|(?=\n)|$)")
AUXILIARIES = "is|are|was|were|will|should|would|could|must|does|do|did"
APOSTROPHE = "['’]"
# Lower case only: a capitalised auxiliary opens a question ("Is it...?"), where "not" would not fit.
NEGATIONS = (  # (pattern, replacement): remove a negation or add one
    (re.compile(r"\bcannot\b"), "can"),
    (re.compile(rf"\bcan{APOSTROPHE}t\b"), "can"),
    (re.compile(rf"\bwon{APOSTROPHE}t\b"), "will"),
    (re.compile(rf"\b({AUXILIARIES}) not\b"), r"\1"),
    (re.compile(rf"\b({AUXILIARIES})n{APOSTROPHE}t\b"), r"\1"),
    (re.compile(r"\bcan\b"), "cannot"),
    (re.compile(rf"\b({AUXILIARIES})\b(?! not\b)"), r"\1 not"),
)

def wrap(before: str, text: str, after: str) -> str:
    """`text` between two added sentences, as separate paragraphs when it has lines of its own."""
    separator = "\n\n" if "\n" in text else " "
    if after and separator == " " and text[-1:] not in ".!?":
        text += "."  # a terse answer such as "42" needs a full stop before the next sentence
    return separator.join(part for part in (before, text, after) if part)


def wrong_number(text, rng, pair, pool):
    numbers = sorted({match.group() for match in NUMBER.finditer(text)})
    if not numbers:
        return None
    old = rng.choice(numbers)
    # A new last digit keeps the number's size and format, so only its value is wrong.
    new = old[:-1] + rng.choice([d for d in "0123456789" if d != old[-1]])
    # Every occurrence changes, so a restated answer stays consistent: wrong, not self-contradictory.
    return NUMBER.sub(lambda match: new if match.group() == old else match.group(), text)


def _about_the_question(sentence: str) -> bool:
    """A restated question or a remark about it: negating it leaves the answer intact."""
    return sentence.rstrip().endswith("?") or re.search(r"\bquestion", sentence, re.IGNORECASE) is not None


def negation(text, rng, pair, pool):
    spans: dict[int, tuple[int, str]] = {}  # start -> (end, replacement); the first rule to claim a start wins
    for pattern, replacement in NEGATIONS:
        for match in pattern.finditer(text):
            spans.setdefault(match.start(), (match.end(), match.expand(replacement)))
    # Flip a statement of the answer, not a restatement of the question.
    skip = [m.span() for m in SENTENCE.finditer(text) if _about_the_question(m.group())]
    answer_spans = [start for start in spans if not any(a <= start < b for a, b in skip)]
    if not answer_spans:
        return None
    start = rng.choice(sorted(answer_spans))
    end, replacement = spans[start]
    return text[:start] + replacement + text[end:]


def cut_words(text: str, keep: Callable[[int], int]) -> str | None:
    """`text` cut after keep(word count) words (texts of 4+ words only), without trailing punctuation,
    so the cut reads as unfinished rather than as a short answer."""
    words = list(re.finditer(r"\S+", text))
    if len(words) < 4:
        return None
    return re.sub(r"[\W_]+\Z", "", text[:words[keep(len(words)) - 1].end()]) or None


STOPWORDS = frozenset("what which when where this that with from have does your about into their there would could should "
                      "many much some than then them they these those will been were also just like make more most".split())


def content_words(prompt: list[dict] | str) -> set[str]:
    text = prompt if isinstance(prompt, str) else " ".join(m["content"] or "" for m in prompt)
    return set(re.findall(r"[a-z]{4,}", text.lower())) - STOPWORDS


def off_topic(text, rng, pair, pool):
    words = content_words(pair["prompt"])

    def other(p: dict) -> bool:
        # A paraphrase of the same prompt ("capital of France?" / "France's capital?") may share the
        # right answer, so the other prompt must share few content words with this one.
        if p["prompt_key"] == pair["prompt_key"] or p["chosen"] == text:
            return False
        theirs = content_words(p["prompt"])
        return len(words & theirs) <= 0.25 * max(1, len(words | theirs))

    # Sampling keeps this O(1) per pair on big splits; scan the pool only when sampling finds nothing.
    candidates = [p for p in (rng.choice(pool) for _ in range(20)) if other(p)][:5] if pool else []
    if not candidates:
        others = [p for p in pool if other(p)]
        candidates = rng.sample(others, min(5, len(others)))
    return max(candidates, key=lambda p: len(p["chosen"]))["chosen"] if candidates else None
