"""Synthetic response sets: one correct answer and k - 1 distinct flawed ones per prompt, a known gold
grade per response, the pair generator's artifacts planted pair by pair; the pairs themselves unchanged."""

import hashlib
import json

import pytest
from test_synthetic import arithmetic_answer, count_answer, has_markdown, is_polite, numbers

from rmlab.data.response_sets import to_response_set
from rmlab.data.synthetic import TASKS, generate_pairs, generate_sets

KEYS = {"prompt", "responses", "scores", "task", "flaws", "correct_index", "correct_longest", "formatted", "polite", "chars"}


def test_the_pair_generator_gives_the_pairs_it_gave_before_sets_existed():
    # sha256 of generate_pairs(400, seed=0), computed with the generator of commit a76cb03 (before the
    # flawed-answer code was split out for sets): drafts are drawn in the same order as before.
    pairs = json.dumps(generate_pairs(400, seed=0), sort_keys=True).encode()
    assert hashlib.sha256(pairs).hexdigest() == "3d4380ca0f06bc8b0e35db49bf2e70373404d296074ceaad3d94506d80ab82a8"


def test_same_arguments_same_sets():
    assert generate_sets(100, k=4, seed=3) == generate_sets(100, k=4, seed=3)
    assert generate_sets(100, k=4, seed=3) != generate_sets(100, k=4, seed=4)


@pytest.mark.parametrize("k", [2, 4, 7])
def test_one_correct_answer_and_k_minus_1_distinct_flawed_ones(k):
    sets = generate_sets(300, k=k, seed=k)
    assert {s["task"] for s in sets} == set(TASKS)
    for s in sets:
        assert set(s) == KEYS
        assert len(s["responses"]) == len(set(s["responses"])) == k
        assert s["scores"] == [float(i == s["correct_index"]) for i in range(k)]
        assert [flaw == "" for flaw in s["flaws"]] == [i == s["correct_index"] for i in range(k)]
        assert s["chars"] == [len(r) for r in s["responses"]]
        assert s["correct_longest"] == (max(s["chars"]) == s["chars"][s["correct_index"]])
        assert to_response_set(s)["scores"] == s["scores"]  # a valid sets_scores row


@pytest.mark.parametrize("task, answer", [("arithmetic", arithmetic_answer), ("counting", count_answer)])
def test_the_correct_response_holds_the_answer_and_no_flawed_one_does(task, answer):
    for s in generate_sets(300, k=5, seed=2, tasks=[task]):
        correct = answer(s["prompt"])
        for i, response in enumerate(s["responses"]):
            assert (correct in numbers(response)) == (i == s["correct_index"]), s


@pytest.mark.parametrize("length_bias", [0.8, 0.5, 0.2])
def test_length_bias_is_the_share_of_flawed_responses_shorter_than_the_correct_one(length_bias):
    sets = generate_sets(2000, k=4, seed=0, length_bias=length_bias)
    shorter = [chars < s["chars"][s["correct_index"]] for s in sets for i, chars in enumerate(s["chars"]) if i != s["correct_index"]]
    assert abs(sum(shorter) / len(shorter) - length_bias) <= 0.03


@pytest.mark.parametrize("length_bias", [0.0, 1.0])
def test_extreme_length_bias_makes_the_correct_response_shortest_or_longest(length_bias):
    for s in generate_sets(300, k=4, seed=1, length_bias=length_bias, verbosity=0.0):
        place = sorted(s["chars"]).index(s["chars"][s["correct_index"]])
        assert place == (3 if length_bias == 1.0 else 0), s
        assert len(set(s["chars"])) == 4  # every response has its own length


@pytest.mark.parametrize("kind", ["format", "polite"])
@pytest.mark.parametrize("bias", [1.0, 0.0])
def test_one_sided_decoration_follows_bias_pair_by_pair(kind, bias):
    key = "formatted" if kind == "format" else "polite"
    seen = has_markdown if kind == "format" else is_polite
    one_sided = 0
    for s in generate_sets(500, k=4, seed=0, **{f"{kind}_rate": 0.3, f"{kind}_bias": bias}):
        correct = s[key][s["correct_index"]]
        assert [seen(r) for r in s["responses"]] == s[key]
        for i, flagged in enumerate(s[key]):
            if i != s["correct_index"] and flagged != correct:
                one_sided += 1
                assert correct == (bias == 1.0), s
    assert one_sided > 200


def test_zero_rate_means_no_decoration():
    for s in generate_sets(200, k=4, seed=0, format_rate=0.0, polite_rate=0.0):
        assert not any(s["formatted"]) and not any(s["polite"])
        assert not any(has_markdown(r) or is_polite(r) for r in s["responses"])


def test_prompt_filter_and_bad_arguments():
    sets = generate_sets(50, k=3, seed=0, prompt_filter=lambda prompt: "?" in prompt)
    assert all("?" in s["prompt"] for s in sets)
    for k in (1, 2.5, True):
        with pytest.raises(ValueError, match=rf"^k must be an integer >= 2 \(responses per prompt\), got {k!r}"):
            generate_sets(1, k=k)
    with pytest.raises(ValueError, match=r"^found \d+ of 198 more distinct flawed answers to a facts prompt; use a smaller k"):
        generate_sets(1, k=200, tasks=["facts"])
    with pytest.raises(ValueError, match="length_bias must be a probability"):
        generate_sets(1, length_bias=1.5)
