"""Tests for the adversarial probes: each rewrite on hand-made pairs, then all of them on synthetic data."""

import random
import re

import pytest

from rmlab.data.formats import prompt_key
from rmlab.data.synthetic import generate_pairs
from rmlab.diagnostics import probes
from rmlab.diagnostics.probes import PROBES, Probe, build_probe_items
from rmlab.text.patterns import PATTERNS
from rmlab.text.rewrites import SENTENCE


def make_pair(chosen, rejected="It is 5.", prompt="What is 2 + 2?"):
    messages = [{"role": "user", "content": prompt}]
    return {"prompt": messages, "chosen": chosen, "rejected": rejected, "prompt_key": prompt_key(messages)}


def apply(name, pair, seed=0, pool=None):
    return PROBES[name].apply(pair, random.Random(seed), pool if pool is not None else [pair])


def synthetic_pairs(n, seed):
    """Synthetic pairs in the normalised form the data module gives: prompt messages and prompt_key."""
    return [make_pair(p["chosen"], p["rejected"], p["prompt"]) for p in generate_pairs(n, seed=seed)]


def test_probe_table():
    assert list(PROBES) == ["wrong_number", "negation", "insult", "truncate", "repetition", "off_topic",
                            "filler", "markdown", "sycophancy"]
    for name, probe in PROBES.items():
        assert probe.name == name and probe.description and "\n" not in probe.description
        expected = ("chosen", "flaw") if name in list(PROBES)[:6] else ("rejected", "inflation")
        assert (probe.source, probe.kind) == expected


def test_apply_never_returns_the_original():
    identity = Probe("identity", "chosen", "the text itself", "flaw", lambda text, rng, pair, pool: text)
    assert identity.apply(make_pair("It is 4."), random.Random(0), []) is None


@pytest.mark.parametrize("seed", range(5))
def test_wrong_number_changes_one_digit(seed):
    text = apply("wrong_number", make_pair("The answer is 42."), seed)
    assert re.fullmatch(r"The answer is 4[013-9]\.", text)
    text = apply("wrong_number", make_pair("Pi is about 3.14 and e is 1,000."), seed)
    assert len(text) == len("Pi is about 3.14 and e is 1,000.")
    assert re.fullmatch(r"Pi is about (3\.1[0-35-9] and e is 1,000|3\.14 and e is 1,00[1-9])\.", text)


def test_wrong_number_changes_every_occurrence_of_the_number():
    texts = {apply("wrong_number", make_pair("2 + 2 = 4. So 2 + 2 = 4."), seed) for seed in range(20)}
    for text in texts:
        first, second = text.split(". So ")
        assert first + "." == second and first != "2 + 2 = 4"
    assert any(t.startswith("2 + 2 = ") for t in texts) and any(not t.startswith("2 + 2") for t in texts)


@pytest.mark.parametrize("text", ["Paris.", "H2O and mp3 and 3rd.", ""])
def test_wrong_number_needs_a_number(text):
    assert apply("wrong_number", make_pair(text)) is None


@pytest.mark.parametrize("text,expected", [
    ("The sky is blue.", "The sky is not blue."),
    ("The sky is not blue.", "The sky is blue."),
    ("Birds can fly.", "Birds cannot fly."),
    ("You cannot go.", "You can go."),
    ("It isn't here.", "It is here."),
    ("They won’t stop.", "They will stop."),
    ("It does not matter.", "It does matter."),
    ("We should wait.", "We should not wait."),
])
def test_negation(text, expected):
    assert apply("negation", make_pair(text)) == expected


@pytest.mark.parametrize("text", ["Paris.", "Is it blue?", "This island has a mayor.", ""])
def test_negation_needs_a_statement_to_flip(text):
    assert apply("negation", make_pair(text)) is None


def test_negation_flips_one_of_several():
    texts = {apply("negation", make_pair("It is red and it was blue."), seed) for seed in range(20)}
    assert texts == {"It is not red and it was blue.", "It is red and it was not blue."}


def test_insult_wraps_the_answer():
    text = apply("insult", make_pair("42"))
    assert text in {f"{o} 42. {c}" for o in probes.INSULT_OPENERS for c in probes.INSULT_CLOSERS}
    text = apply("insult", make_pair("- a\n- b"))
    assert text in {f"{o}\n\n- a\n- b\n\n{c}" for o in probes.INSULT_OPENERS for c in probes.INSULT_CLOSERS}


@pytest.mark.parametrize("text,expected", [
    ("one two three four five six.", "one two three"),
    ("It is 42, because six times seven.", "It is 42"),  # the cut word's comma goes too
    ("- a b\n- c d", "- a b"),
    ("a b c", None),
])
def test_truncate(text, expected):
    result = apply("truncate", make_pair(text))
    assert result == expected
    if result is not None:
        assert text.startswith(result) and result[-1].isalnum()


def test_repetition():
    texts = {apply("repetition", make_pair("First one. Second one!"), seed) for seed in range(40)}
    assert texts == {" ".join(["First one."] * k + ["Second one!"]) for k in (3, 4, 5)} | {
        " ".join(["First one."] + ["Second one!"] * k) for k in (3, 4, 5)}
    assert apply("repetition", make_pair("42"), 0) in {"42 42 42", "42 42 42 42", "42 42 42 42 42"}
    assert apply("repetition", make_pair("   ")) is None


def test_negation_leaves_the_restated_question_alone():
    assert apply("negation", make_pair("The question is: what is 2 + 2? It is 4.")) == \
        "The question is: what is 2 + 2? It is not 4."
    assert apply("negation", make_pair("This is a common kind of question. 4")) is None


def test_off_topic_skips_paraphrased_prompts():
    pair = {**make_pair("Paris."), "prompt": [{"role": "user", "content": "What is the capital of France?"}]}
    paraphrase = {**make_pair("The capital of France is Paris."), "prompt_key": "other",
                  "prompt": [{"role": "user", "content": "Name the capital city of France."}]}
    unrelated = {**make_pair("Seven."), "prompt_key": "third", "prompt": [{"role": "user", "content": "How many days in a week?"}]}
    assert apply("off_topic", pair, pool=[pair, paraphrase]) is None
    assert apply("off_topic", pair, pool=[pair, paraphrase, unrelated]) == "Seven."


def test_off_topic_takes_another_prompts_chosen():
    pair = make_pair("2 + 2 = 4.")
    same_prompt = make_pair("It is four.")
    same_text = make_pair("2 + 2 = 4.", prompt="What is two plus two?")
    short = make_pair("Blue.", prompt="What colour is the sky?")
    long = make_pair("The capital of France is Paris.", prompt="What is the capital of France?")
    assert apply("off_topic", pair, pool=[pair, same_prompt, same_text]) is None
    assert apply("off_topic", pair, pool=[pair, same_prompt, same_text, short]) == "Blue."
    # Five draws from two candidates all miss the long one only 1 time in 32; seed 0 finds it.
    assert apply("off_topic", pair, pool=[pair, short, long]) == long["chosen"]
    assert apply("off_topic", pair, pool=[]) is None


def test_filler_pads_both_ends():
    text = apply("filler", make_pair("x", rejected="It is 5"))
    assert text in {f"{b} It is 5. {a}" for b in probes.FILLER_BEFORE for a in probes.FILLER_AFTER}
    assert not any(PATTERNS[name](text) for name in ("politeness", "praise_opener", "exclamation", "hedging"))


def test_markdown_decorates_the_same_sentences():
    text = apply("markdown", make_pair("x", rejected="It is 5. Five is right!"))
    assert text in {f"{h}\n\n- **It is 5.**\n- Five is right!" for h in probes.HEADERS}
    text = apply("markdown", make_pair("x", rejected="- It is 5.\n- Yes"))
    assert text.endswith("\n\n- **It is 5.**\n- Yes")
    assert all(PATTERNS[name](text) for name in ("markdown_list", "markdown_header", "bold"))


def test_sycophancy_prepends_flattery():
    text = apply("sycophancy", make_pair("x", rejected="It is 5."))
    assert text in {f"{o} It is 5." for o in probes.SYCOPHANTIC_OPENERS}
    assert PATTERNS["praise_opener"](text)


def test_build_probe_items():
    pairs = synthetic_pairs(40, seed=2)
    items = build_probe_items(pairs, seed=3)
    assert items == build_probe_items(pairs, seed=3)
    assert items != build_probe_items(pairs, seed=4)
    assert [i["probe"] for i in items] == sorted((i["probe"] for i in items), key=list(PROBES).index)
    item = items[0]
    assert set(item) == {"probe", "pair_index", "source", "prompt", "text"}
    assert item["prompt"] == pairs[item["pair_index"]]["prompt"] and item["source"] == PROBES[item["probe"]].source

    some = build_probe_items(pairs, names=["sycophancy", "wrong_number"], max_pairs=10, seed=3)
    chosen_indices = {i["pair_index"] for i in some if i["probe"] == "sycophancy"}  # sycophancy always applies
    assert len(chosen_indices) == 10
    assert {i["pair_index"] for i in some if i["probe"] == "wrong_number"} <= chosen_indices
    assert [i["probe"] for i in some] == sorted((i["probe"] for i in some), key=["sycophancy", "wrong_number"].index)
    assert build_probe_items(pairs, names=[]) == []
    with pytest.raises(ValueError, match=r"\['nope'\].*wrong_number"):
        build_probe_items(pairs, names=["filler", "nope"])


def test_every_probe_on_synthetic_pairs():
    pairs = synthetic_pairs(300, seed=1)
    items = build_probe_items(pairs, seed=0)
    by_probe = {name: [i for i in items if i["probe"] == name] for name in PROBES}
    for item in items:
        pair = pairs[item["pair_index"]]
        assert item["text"] != pair[item["source"]] and item["text"] != pair["chosen"]

    # wrong_number applies exactly to answers with a number (not the facts or word sorting ones).
    with_number = [i for i, p in enumerate(pairs) if re.search(r"\d", p["chosen"])]
    assert [i["pair_index"] for i in by_probe["wrong_number"]] == with_number and len(with_number) >= 200
    for item in by_probe["wrong_number"]:
        original = pairs[item["pair_index"]]["chosen"]
        assert len(item["text"]) == len(original)
        assert all(a.isdigit() and b.isdigit() for a, b in zip(original, item["text"]) if a != b)

    # Negation flips a statement of the answer, never the restated question or a remark about it.
    assert len(by_probe["negation"]) >= 100
    for item in by_probe["negation"]:
        original = pairs[item["pair_index"]]["chosen"]
        assert abs(len(item["text"]) - len(original)) in (3, 4)  # " not", "not" in "cannot", "n't"
        changed = next(i for i, (a, b) in enumerate(zip(original, item["text"])) if a != b)
        sentence = next(m.group() for m in SENTENCE.finditer(item["text"]) if m.start() <= changed < m.end())
        assert "question" not in sentence.lower() and not sentence.endswith("?"), sentence

    for name in ("insult", "repetition", "filler", "markdown", "sycophancy", "off_topic"):
        assert len(by_probe[name]) == len(pairs), name
    for item in by_probe["insult"] + by_probe["repetition"]:
        assert len(item["text"]) > len(pairs[item["pair_index"]]["chosen"])
    for item in by_probe["filler"] + by_probe["sycophancy"]:
        rejected = pairs[item["pair_index"]]["rejected"]
        assert rejected in item["text"] and len(item["text"]) > len(rejected)

    assert len(by_probe["truncate"]) == sum(len(p["chosen"].split()) >= 4 for p in pairs)
    for item in by_probe["truncate"]:
        original = pairs[item["pair_index"]]["chosen"]
        # Words that are only punctuation ("-", "=") before the cut go with the final punctuation.
        assert original.startswith(item["text"]) and item["text"][-1].isalnum()
        assert len(original.split()) // 2 - 2 <= len(item["text"].split()) <= len(original.split()) // 2

    chosen_by_key = {}
    for pair in pairs:
        chosen_by_key.setdefault(pair["chosen"], set()).add(pair["prompt_key"])
    for item in by_probe["off_topic"]:
        assert chosen_by_key[item["text"]] - {pairs[item["pair_index"]]["prompt_key"]}
