"""Tests for counterfactual augmentation: counts, what each kind does, and its separation from the probes."""

import copy
import logging
from collections import Counter

import pytest

from rmlab.data import augment, synthetic
from rmlab.data.augment import DEFAULT_KINDS, KINDS, augment_pairs
from rmlab.data.formats import prompt_key
from rmlab.data.synthetic import generate_pairs
from rmlab.diagnostics import probes
from rmlab.diagnostics.probes import PROBES, build_probe_items
from rmlab.text.patterns import PATTERNS
from rmlab.text.rewrites import NUMBER, SENTENCE

PROBE_BANKS = (probes.INSULT_OPENERS, probes.INSULT_CLOSERS, probes.FILLER_BEFORE, probes.FILLER_AFTER,
               probes.HEADERS, probes.SYCOPHANTIC_OPENERS)
AUGMENT_BANKS = (augment.INSULT_OPENERS, augment.INSULT_CLOSERS, augment.FILLER_BEFORE, augment.FILLER_AFTER,
                 augment.HEADERS, augment.SYCOPHANTIC_OPENERS)
# Every sentence of every probe phrase, so that not even half of a two-sentence opener slips through.
PROBE_SENTENCES = sorted({m.group() for bank in PROBE_BANKS for phrase in bank for m in SENTENCE.finditer(phrase)})
BANKED = ("insult", "filler", "markdown", "sycophancy")
NATO = ("alfa bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
        "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def make_pair(chosen, rejected="It is 5.", prompt="What is 2 + 2?", origin="hand row 1", **metadata):
    messages = [{"role": "user", "content": prompt}]
    return {"prompt": messages, "chosen": chosen, "rejected": rejected, "prompt_key": prompt_key(messages),
            "origin": origin, **metadata}


def synthetic_pairs(n, seed=0):
    """Synthetic pairs as the data module gives them, with the generator's metadata columns kept."""
    pairs = []
    for i, p in enumerate(generate_pairs(n, seed=seed)):
        messages = [{"role": "user", "content": p["prompt"]}]
        pairs.append({**p, "prompt": messages, "prompt_key": prompt_key(messages), "origin": f"synthetic row {i}"})
    return pairs


def every_kind_applies(n):
    """Pairs every kind applies to: a number, an auxiliary to negate, 4+ words, unrelated prompts."""
    return [make_pair(f"The {name} code is {i + 10}, and it is used by radio operators.", f"It is {name}.",
                      f"What about {name}?", f"hand row {i}") for i, name in enumerate(NATO[:n])]


def rewrite(kind, chosen="x", rejected="It is 5.", seed=0):
    """The one new rejected text that `kind` makes of a hand-written pair, or None."""
    new = augment_pairs([make_pair(chosen, rejected)], 0.5, [kind], seed)
    return new[0]["rejected"] if new else None


def source_of(new_pair, pairs):
    return next(p for p in pairs if new_pair["origin"] == f"augment:{new_pair['augment']} of {p['origin']}")


def test_kind_table():
    assert list(KINDS) == list(PROBES)
    assert all(KINDS[name] == probe.kind for name, probe in PROBES.items())
    assert DEFAULT_KINDS == ("wrong_number", "negation", "truncate", "filler", "markdown")


@pytest.mark.parametrize("share,expected", [(0.2, 25), (0.5, 100), (0.1, 11), (0.0, 0)])
def test_counts(share, expected):
    pairs = synthetic_pairs(100)
    before = copy.deepcopy(pairs)
    new = augment_pairs(pairs, share)
    assert len(new) == expected == round(100 * share / (1 - share))
    assert pairs == before  # the sources are left alone
    assert not any(p in pairs for p in new)


def test_nothing_to_do():
    pairs = synthetic_pairs(10)
    assert augment_pairs(pairs, 0.5, kinds=[]) == []
    assert augment_pairs([], 0.5) == []
    assert augment_pairs(pairs, 0.04) == []  # round(10 * 0.04 / 0.96) == 0


@pytest.mark.parametrize("share", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_share(share):
    with pytest.raises(ValueError, match=r"share must be in \[0, 1\)"):
        augment_pairs(synthetic_pairs(3), share)


def test_unknown_kind():
    with pytest.raises(ValueError, match=r"\['nope'\].*wrong_number.*sycophancy"):
        augment_pairs(synthetic_pairs(3), 0.2, kinds=["filler", "nope"])
    with pytest.raises(ValueError, match="'filler'"):
        augment_pairs(synthetic_pairs(3), 0.2, kinds="filler")


def test_new_pairs_keep_their_source():
    pairs = synthetic_pairs(100) + [make_pair("The sky is blue today, as it is most days.", origin="hand row 1",
                                             margin=0.5, source="hand")]
    new = augment_pairs(pairs, 0.8, kinds=list(KINDS))
    assert len(new) == 404 and len({p["origin"] for p in new}) == 404
    for pair in new:
        source = source_of(pair, pairs)
        assert set(pair) == set(source) | {"augment"}
        assert {k: v for k, v in pair.items() if k not in ("rejected", "origin", "augment")} == \
            {k: v for k, v in source.items() if k not in ("rejected", "origin")}
        assert pair["chosen"] == source["chosen"] and pair["rejected"] != pair["chosen"]
        rewritten = source["chosen" if KINDS[pair["augment"]] == "flaw" else "rejected"]
        assert pair["rejected"] != rewritten
    assert set(Counter(p["augment"] for p in new)) == set(KINDS)


@pytest.mark.parametrize("seed", range(5))
def test_wrong_number_changes_one_number_everywhere(seed):
    original = "2 + 2 = 4, so 2 + 2 = 4 and 10 is more."
    text = rewrite("wrong_number", original, seed=seed)
    before, after = NUMBER.findall(original), NUMBER.findall(text)
    assert len(after) == len(before) and NUMBER.sub("N", text) == NUMBER.sub("N", original)
    mapping = dict(zip(before, after))
    assert list(zip(before, after)) == [(old, mapping[old]) for old in before]  # every occurrence alike
    assert len({old for old, new in mapping.items() if old != new}) == 1
    assert rewrite("wrong_number", "Paris.") is None


@pytest.mark.parametrize("text,expected", [
    ("The sky is blue.", "The sky is not blue."),
    ("Birds cannot fly.", "Birds can fly."),
    ("It isn't here.", "It is here."),
    ("Paris.", None),
])
def test_negation(text, expected):
    assert rewrite("negation", text) == expected


def test_truncate_is_a_random_strict_prefix():
    original = "one two three four five six seven eight nine ten."
    texts = {rewrite("truncate", original, seed=seed) for seed in range(40)}
    assert {len(t.split()) for t in texts} == {3, 4, 5, 6, 7}  # 30-70 % of 10 words
    for text in texts:
        assert original.startswith(text) and len(text) < len(original) and text[-1].isalnum()
    # A cut after "42," drops the comma too, so the answer reads unfinished rather than complete.
    assert {rewrite("truncate", "It is 42, because six times seven.", seed=seed) for seed in range(40)} == {
        "It is", "It is 42", "It is 42, because", "It is 42, because six"}
    assert rewrite("truncate", "a b c") is None


def test_repetition_says_a_sentence_two_to_four_times():
    texts = {rewrite("repetition", "First one. Second one!", seed=seed) for seed in range(40)}
    assert texts == {" ".join(["First one."] * k + ["Second one!"]) for k in (2, 3, 4)} | {
        " ".join(["First one."] + ["Second one!"] * k) for k in (2, 3, 4)}
    assert rewrite("repetition", "## Answer\n\nIt is 4.", seed=1).startswith("## Answer\n\nIt is 4. It is 4.")
    assert rewrite("repetition", "## Answer") is None


def test_off_topic_takes_an_unrelated_prompts_chosen():
    pair = make_pair("2 + 2 = 4.", origin="a")
    paraphrase = make_pair("It is four.", prompt="What is two plus two?", origin="b")
    unrelated = make_pair("The capital of France is Paris.", prompt="Name the capital of France.", origin="c")
    new = augment_pairs([pair, paraphrase, unrelated], 0.5, ["off_topic"])
    assert {(p["origin"], p["rejected"]) for p in new} >= {("augment:off_topic of a", unrelated["chosen"])}
    assert all(p["rejected"] in {pair["chosen"], paraphrase["chosen"], unrelated["chosen"]} for p in new)


def test_insult_wraps_the_answer():
    assert rewrite("insult", "42") in {f"{o} 42. {c}" for o in augment.INSULT_OPENERS for c in augment.INSULT_CLOSERS}
    assert rewrite("insult", "- a\n- b") in {
        f"{o}\n\n- a\n- b\n\n{c}" for o in augment.INSULT_OPENERS for c in augment.INSULT_CLOSERS}


def test_filler_pads_both_ends_with_nothing_but_length():
    texts = {rewrite("filler", rejected="It is 5", seed=seed) for seed in range(40)}
    assert texts == {f"{b} It is 5. {a}" for b in augment.FILLER_BEFORE for a in augment.FILLER_AFTER}
    for text in texts:
        assert not any(PATTERNS[name](text) for name in ("politeness", "praise_opener", "exclamation", "hedging"))


def test_sycophancy_prepends_flattery():
    texts = {rewrite("sycophancy", rejected="It is 5.", seed=seed) for seed in range(20)}
    assert texts == {f"{o} It is 5." for o in augment.SYCOPHANTIC_OPENERS}


def test_markdown_uses_its_own_markup():
    texts = {rewrite("markdown", rejected="It is 5. Five is right!", seed=seed) for seed in range(20)}
    assert texts == {f"{h}\n\n{body}" for h in augment.HEADERS
                     for body in ("* _It is 5._\n* Five is right!", "1. _It is 5._\n2. Five is right!")}
    for text in texts:
        assert PATTERNS["markdown_header"](text) and PATTERNS["markdown_list"](text) and not PATTERNS["bold"](text)
    # The original's header and bullets make way for ours rather than nesting inside them.
    text = rewrite("markdown", rejected="## Answer\n\n- It is 5.\n- Yes", seed=1)
    assert text.split("\n\n")[0] in augment.HEADERS and text.split("\n\n")[1] in {
        "* _It is 5._\n* Yes", "1. _It is 5._\n2. Yes"}
    assert rewrite("markdown", rejected="## Answer") is None


def test_phrase_banks_share_nothing_with_the_probes():
    for ours in (phrase.casefold() for bank in AUGMENT_BANKS for phrase in bank):
        for theirs in (s.casefold() for s in PROBE_SENTENCES):
            assert theirs not in ours and ours not in theirs, (ours, theirs)
    assert not any(h.startswith("## ") for h in augment.HEADERS)
    # Both sides of a synthetic pair carry its decorations, so they must not be taught as a flaw.
    decorations = synthetic.FILLERS + synthetic.HEADERS + synthetic.POLITE_OPENERS + synthetic.POLITE_CLOSERS
    for ours in (phrase.casefold() for bank in AUGMENT_BANKS for phrase in bank):
        assert not any(d.casefold() in ours or ours in d.casefold() for d in decorations), ours


@pytest.mark.parametrize("seed", range(3))
def test_no_augmented_text_holds_a_probe_sentence(seed):
    pairs = synthetic_pairs(100, seed=seed) + [make_pair("Fine. 42", "It is 5! Yes.", origin="hand row 2")]
    new = augment_pairs(pairs, 0.8, kinds=list(KINDS), seed=seed)
    assert len(new) == 404
    for pair in new:
        source = source_of(pair, pairs)
        if pair["augment"] == "off_topic":  # another training pair's chosen answer, word for word
            assert any(pair["rejected"] == p["chosen"] for p in pairs if p is not source)
            continue
        original = source["chosen" if KINDS[pair["augment"]] == "flaw" else "rejected"]
        for sentence in PROBE_SENTENCES:  # the synthetic data has "## Answer" headers of its own
            assert pair["rejected"].count(sentence) <= original.count(sentence), (sentence, pair["rejected"])


def test_no_probe_rewrite_equals_an_augmentation():
    pairs = synthetic_pairs(100, seed=4)
    for seed in range(3):
        probe_texts = {item["text"] for item in build_probe_items(pairs, names=list(BANKED), seed=seed)}
        ours = [p["rejected"] for p in augment_pairs(pairs, 0.8, kinds=BANKED, seed=seed)]
        assert len(ours) == 400 and probe_texts.isdisjoint(ours)


def test_every_synthetic_rewrite_differs_from_chosen_and_source():
    pairs = synthetic_pairs(200, seed=5)
    new = augment_pairs(pairs, 0.75, kinds=list(KINDS))
    assert len(new) == 600
    for pair in new:
        source = source_of(pair, pairs)
        assert pair["rejected"] not in (source["chosen"], source["rejected"])
        if pair["augment"] == "truncate":
            assert source["chosen"].startswith(pair["rejected"]) and len(pair["rejected"]) < len(source["chosen"])
        if pair["augment"] in ("filler", "sycophancy"):
            assert source["rejected"] in pair["rejected"]
        if pair["augment"] == "insult":
            assert source["chosen"] in pair["rejected"]


def test_deterministic_by_seed():
    pairs = synthetic_pairs(60, seed=6)
    first = augment_pairs(pairs, 0.3, seed=1)
    assert first == augment_pairs(copy.deepcopy(pairs), 0.3, seed=1)
    assert first != augment_pairs(pairs, 0.3, seed=2)


@pytest.mark.parametrize("share,expected", [(0.5, 26), (0.75, 78)])
def test_kinds_take_turns(share, expected):
    pairs = every_kind_applies(26)
    new = augment_pairs(pairs, share, kinds=list(KINDS), seed=3)
    counts = Counter(p["augment"] for p in new)
    assert len(new) == expected and set(counts) == set(KINDS) and max(counts.values()) - min(counts.values()) <= 1
    # When the sources cycle, each one is drawn equally often and never twice with the same kind.
    assert set(Counter(p["prompt_key"] for p in new).values()) == {expected // 26}
    assert len({(p["prompt_key"], p["augment"]) for p in new}) == expected
    assert Counter(p["augment"] for p in augment_pairs(pairs, 0.5, seed=3)) == \
        {"wrong_number": 6, "negation": 5, "truncate": 5, "filler": 5, "markdown": 5}


def test_a_kind_that_does_not_apply_passes_to_the_next():
    new = augment_pairs([make_pair("Paris.", origin="a")], 0.5, ["wrong_number", "filler"])
    assert [(p["augment"], p["origin"]) for p in new] == [("filler", "augment:filler of a")]


def test_a_source_nothing_applies_to_is_skipped():
    pairs = [make_pair("Paris.", origin="a"), make_pair("It is 42.", origin="b")]
    for seed in range(5):  # whichever comes first in the permutation
        assert [p["origin"] for p in augment_pairs(pairs, 1 / 3, ["wrong_number"], seed)] == \
            ["augment:wrong_number of b"]


def test_warns_when_sources_run_out(caplog):
    pairs = [make_pair("Paris.", origin=f"row {i}") for i in range(4)]
    with caplog.at_level(logging.WARNING, logger="rmlab.data.augment"):
        new = augment_pairs(pairs, 0.75, ["wrong_number", "filler"])
    assert len(new) == 4 and {p["augment"] for p in new} == {"filler"}
    assert "made 4 of 12 new pairs" in caplog.text and "4 source pairs x 2 kinds" in caplog.text
    assert "{'filler': 4}" in caplog.text
