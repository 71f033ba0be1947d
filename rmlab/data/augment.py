"""Counterfactual training pairs: the intact chosen answer against a flawed or inflated rewrite.

A reward model trained on ordinary preference pairs can learn surface cues (length, markdown,
flattery) in place of quality. Counterfactual data augmentation adds pairs in which cue and quality
disagree, so that the cue alone stops predicting the label: the chosen answer against a copy of
itself with one real flaw (a wrong number, a flipped statement, a cut-off ending), or against the
rejected answer dressed up with filler, markup or flattery. This follows "RRM: Robust Reward Model
Training Mitigates Reward Hacking" (Liu et al., 2024, arXiv 2409.13156), which augments reward-model training data
with counterfactual pairs so that artifacts independent of the answer's quality lose their
predictive power, and counterfactually augmented data in NLP ("Learning the Difference that Makes
a Difference with Counterfactually-Augmented Data", Kaushik et al., 2020, arXiv 1909.12434).

The evaluation probes (rmlab.diagnostics.probes) apply the same kinds of rewrite to held-out pairs.
Augmentation is kept apart from them so that a probe score measures whether the model learned the
idea, not whether it memorised the probe's sentences:
- give it the training pairs only (the caller's job: augment the train split after splitting,
  never val or test, or a probe pair's source would be in training);
- every added sentence and header comes from the banks below, which share no phrase with the
  probes' banks, and the markdown rewrite uses another markup style (`### ` header, `_italic_`
  first item, numbered or `* ` list, where the probe uses `## `, `**bold**` and `- `);
- the mechanical rewrites use other parameters (a cut at a seeded 30-70 % of the words instead of
  half, a sentence said 2-4 times instead of 3-5);
- by default insult, repetition, off_topic and sycophancy are not used at all, so those probes
  test a kind of rewrite the model never saw in training.

    from rmlab.data.augment import augment_pairs
    train_pairs = train_pairs + augment_pairs(train_pairs, share=0.2, seed=cfg.seed)
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Sequence

# The probes' rewrites without phrase banks are reused: they add no text a probe could recognise.
from rmlab.text.rewrites import SENTENCE, TARGETS, cut_words, negation, off_topic, wrap, wrong_number

logger = logging.getLogger(__name__)

# Disjoint from the probes' banks, and from the synthetic data's decorations, which both sides of a
# synthetic pair carry and which must not be taught as a flaw.
INSULT_OPENERS = (
    "Seriously, you could have looked this up yourself in ten seconds.",
    "Pay attention this time, because I am only explaining it once.",
    "This is embarrassingly basic, but here goes.",
)
INSULT_CLOSERS = (
    "Next time, do your own homework.", "Try to keep up.", "Do not bother me with something this trivial again.",
)
# No hedging, politeness or praise: filler should add length and nothing else.
FILLER_BEFORE = (
    "There is a lot to say on this subject, so here is the gist of it.",
    "To put the matter in context, a few broad remarks come first.",
    "This touches on several related ideas that are worth bearing in mind.",
)
FILLER_AFTER = (
    "Taken together, those are the essential points on the subject.",
    "That wraps up the whole matter from every relevant angle.",
    "With all of that in view, the response above stands complete.",
)
HEADERS = ("### Key points", "### In brief", "### The details")
SYCOPHANTIC_OPENERS = (
    "You always ask the most insightful things, and this is no exception.",
    "I'm genuinely impressed by how sharp you are to wonder about this!",
    "Only a truly brilliant mind would think to ask this!",
)

HEADER_LINE = re.compile(r"^[ \t]*#{1,6}[ \t].*\n?", re.MULTILINE)
BULLET = re.compile(r"^[ \t]*[-*+][ \t]+", re.MULTILINE)


def _insult(text, rng, pair, pool):
    return wrap(rng.choice(INSULT_OPENERS), text, rng.choice(INSULT_CLOSERS))


def _truncate(text, rng, pair, pool):
    # A random cut point, so the model learns "unfinished" rather than "half as long"; at most 70 %
    # of 4+ words keeps the cut a strict prefix.
    return cut_words(text, lambda n: round(n * rng.uniform(0.3, 0.7)))


def _repetition(text, rng, pair, pool):
    # A repeated header ("## Answer ## Answer") would be a markup glitch, not a repeated statement.
    sentences = [m for m in SENTENCE.finditer(text) if not HEADER_LINE.match(m.group())]
    if not sentences:
        return None
    sentence = rng.choice(sentences)
    return text[:sentence.start()] + " ".join([sentence.group()] * rng.randint(2, 4)) + text[sentence.end():]


def _filler(text, rng, pair, pool):
    return wrap(rng.choice(FILLER_BEFORE), text, rng.choice(FILLER_AFTER))


def _markdown(text, rng, pair, pool):
    # The original's own headers and bullets go, so the result carries one markup style: ours.
    sentences = [m.group() for m in SENTENCE.finditer(BULLET.sub("", HEADER_LINE.sub("", text)))]
    if not sentences:
        return None
    sentences[0] = f"_{sentences[0]}_"
    numbered = rng.random() < 0.5
    items = [f"{i}. {s}" if numbered else f"* {s}" for i, s in enumerate(sentences, 1)]
    return rng.choice(HEADERS) + "\n\n" + "\n".join(items)


def _sycophancy(text, rng, pair, pool):
    return wrap(rng.choice(SYCOPHANTIC_OPENERS), text, "")


# One rewrite per probe kind; which answer it rewrites (and whether that is a flaw or an inflation)
# comes from the table the probes read too (rmlab.text.rewrites.TARGETS), so the two cannot disagree.
_REWRITES = {
    "wrong_number": wrong_number, "negation": negation, "insult": _insult, "truncate": _truncate,
    "repetition": _repetition, "off_topic": off_topic, "filler": _filler, "markdown": _markdown,
    "sycophancy": _sycophancy,
}
KINDS: dict[str, str] = {name: TARGETS[name][1] for name in _REWRITES}
DEFAULT_KINDS = ("wrong_number", "negation", "truncate", "filler", "markdown")  # the others stay held out


def _rewrite(kind: str, pair: dict, rng: random.Random, pool: list[dict]) -> str | None:
    """The new rejected text of `kind` for `pair`, or None where the kind does not apply."""
    original = pair[TARGETS[kind][0]]
    text = _REWRITES[kind](original, rng, pair, pool)
    # A rewrite equal to the chosen answer would teach the model to reject a good answer.
    return None if text is None or text in (original, pair["chosen"]) else text


def augment_pairs(pairs: list[dict], share: float, kinds: Sequence[str] = DEFAULT_KINDS, seed: int = 0) -> list[dict]:
    """New pairs, `share` of the training set after augmentation: round(len(pairs) * share / (1 - share)) of them.

    Pass training pairs only. Each new pair is its source pair (all keys copied) with the chosen
    answer intact, "rejected" the rewrite, "origin" "augment:<kind> of <source origin>" and
    "augment" the kind. Sources come in a seeded permutation, cycled when more pairs are needed
    than there are sources; kinds go round-robin over the draws, and a source a kind does not apply
    to takes the next kind it has not had. Each (source, kind) gives at most one pair, so when the
    sources x kinds run out first there are fewer pairs than asked for, and a warning says so.
    The source pairs are not in the result; the same arguments give the same pairs.
    """
    if not 0 <= share < 1:  # also rejects NaN
        raise ValueError(f"share must be in [0, 1) (the new pairs' share of the augmented set), got {share!r}")
    if isinstance(kinds, str):  # a bare string is a Sequence too: its letters would be the kinds
        raise ValueError(f"kinds must be a list of kind names from {list(KINDS)}, got the string {kinds!r}")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown augmentation kind(s) {unknown}; known kinds are {list(KINDS)}")
    kinds = list(dict.fromkeys(kinds))
    target = round(len(pairs) * share / (1 - share))
    if not target or not kinds:
        return []
    # A str seed is hashed with SHA-512, so it is stable across processes (unlike hash()).
    rng = random.Random(f"augment/{seed}")
    order = list(range(len(pairs)))
    rng.shuffle(order)
    tried: set[tuple[int, str]] = set()
    new: list[dict] = []
    # len(kinds) passes over the sources try every source with every kind, whatever applies where.
    for draw in range(len(pairs) * len(kinds)):
        if len(new) == target:
            break
        index = order[draw % len(pairs)]
        for step in range(len(kinds)):
            kind = kinds[(draw + step) % len(kinds)]
            if (index, kind) in tried:
                continue
            tried.add((index, kind))
            text = _rewrite(kind, pairs[index], rng, pairs)
            if text is not None:
                origin = f"augment:{kind} of {pairs[index]['origin']}"
                new.append({**pairs[index], "rejected": text, "origin": origin, "augment": kind})
                break
    if len(new) < target:
        logger.warning("augment_pairs made %d of %d new pairs (share %s): %d source pairs x %d kinds give no more; "
                       "per kind: %s", len(new), target, share, len(pairs), len(kinds),
                       dict(Counter(pair["augment"] for pair in new)))
    return new
