"""Tests for the synthetic preference-pair generator: correctness of answers and planted artifacts."""

import re

import pytest

from rmlab.data import synthetic
from rmlab.data.synthetic import TASKS, generate_pairs

KEYS = {
    "prompt", "chosen", "rejected", "task", "flaw", "chosen_longer",
    "chosen_formatted", "rejected_formatted", "chosen_polite", "rejected_polite",
    "chosen_chars", "rejected_chars",
}
# Ground truth written independently of the module's table.
UNIT_FACTORS = {
    ("kilometres", "metres"): 1000, ("metres", "centimetres"): 100, ("centimetres", "millimetres"): 10,
    ("kilograms", "grams"): 1000, ("tonnes", "kilograms"): 1000, ("litres", "millilitres"): 1000,
    ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("days", "hours"): 24,
    ("weeks", "days"): 7, ("years", "months"): 12, ("feet", "inches"): 12,
}


def numbers(text):
    return [int(token) for token in re.findall(r"\d+", text)]


def arithmetic_answer(prompt):
    x, y = numbers(prompt)
    text = prompt.lower()
    if any(word in text for word in ("+", "plus", "sum", "add")):
        return x + y
    if any(word in text for word in ("-", "minus")):
        return x - y
    assert any(word in text for word in ("*", "times", "product", "multiply")), prompt
    return x * y


def conversion_answer(prompt):
    (value,) = numbers(prompt)
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    (factor,) = [f for (big, small), f in UNIT_FACTORS.items() if big in words and small in words]
    return value * factor


def sorted_answer(prompt):
    items = prompt.split(": ", 1)[1].rstrip(".").split(", ")
    descending = any(word in prompt for word in ("largest to smallest", "descending", "reverse"))
    if all(item.isdigit() for item in items):
        return ", ".join(map(str, sorted(map(int, items), reverse=descending)))
    return ", ".join(sorted(items, reverse=descending))


def count_answer(prompt):
    quoted = re.search(r'"([^"]+)"', prompt)
    if quoted:
        return len(quoted.group(1).split())
    return len(prompt.split(": ", 1)[1].rstrip("?.").split(", "))


def test_same_arguments_give_identical_pairs_and_other_seeds_differ():
    assert generate_pairs(200, seed=3) == generate_pairs(200, seed=3)
    assert generate_pairs(200, seed=3) != generate_pairs(200, seed=4)


def test_pairs_have_exactly_the_documented_keys_and_consistent_lengths():
    pairs = generate_pairs(1000, seed=1)
    assert len(pairs) == 1000
    for pair in pairs:
        assert set(pair) == KEYS
        assert pair["task"] in TASKS
        assert pair["chosen"] != pair["rejected"]
        assert pair["chosen_chars"] == len(pair["chosen"])
        assert pair["rejected_chars"] == len(pair["rejected"])
        assert pair["chosen_chars"] != pair["rejected_chars"]
        assert pair["chosen_longer"] == (len(pair["chosen"]) > len(pair["rejected"]))


def test_zero_pairs_is_an_empty_list():
    assert generate_pairs(0) == []


@pytest.mark.parametrize("length_bias", [0.8, 0.5, 0.2])
def test_chosen_longer_fraction_matches_length_bias(length_bias):
    pairs = generate_pairs(5000, seed=0, length_bias=length_bias)
    fraction = sum(pair["chosen_longer"] for pair in pairs) / len(pairs)
    assert abs(fraction - length_bias) <= 0.03


@pytest.mark.parametrize("length_bias", [0.0, 1.0])
def test_extreme_length_bias_is_exact_even_without_verbosity(length_bias):
    pairs = generate_pairs(500, seed=0, length_bias=length_bias, verbosity=0.0)
    assert all(pair["chosen_longer"] == (length_bias == 1.0) for pair in pairs)


def test_all_tasks_and_their_flaws_appear():
    pairs = generate_pairs(2000, seed=0)
    flaws = {(pair["task"], pair["flaw"]) for pair in pairs}
    assert flaws == {
        ("arithmetic", "off_by_one"), ("arithmetic", "wrong_number"),
        ("unit_conversion", "wrong_factor"),
        ("sorting", "wrong_order"), ("sorting", "missing_element"),
        ("counting", "off_by_one"), ("counting", "wrong_count"),
        ("facts", "wrong_fact"), ("facts", "off_topic"),
    }


@pytest.mark.parametrize("task, answer", [
    ("arithmetic", arithmetic_answer), ("unit_conversion", conversion_answer), ("counting", count_answer),
])
def test_numeric_answers_are_correct_in_chosen_and_absent_from_rejected(task, answer):
    for pair in generate_pairs(1000, seed=2, tasks=[task]):
        correct = answer(pair["prompt"])
        assert correct in numbers(pair["chosen"]), pair
        assert correct not in numbers(pair["rejected"]), pair


def test_sorting_answer_is_correct_in_chosen_and_absent_from_rejected():
    for pair in generate_pairs(1000, seed=2, tasks=["sorting"]):
        correct = sorted_answer(pair["prompt"])
        assert correct in pair["chosen"], pair
        assert correct not in pair["rejected"], pair


def test_hand_checked_parsers():
    assert arithmetic_answer("What is 12 minus 5?") == 7
    assert conversion_answer("How many metres are in 3 kilometres?") == 3000
    assert sorted_answer("Sort these numbers from largest to smallest: 5, 40, 7.") == "40, 7, 5"
    assert count_answer('How many words are in the sentence "the old dog sat"?') == 4
    assert count_answer("How many items are in this list: pear, plum, kiwi?") == 3


def test_facts_chosen_holds_the_table_value_for_a_known_prompt():
    pairs = generate_pairs(3000, seed=0, tasks=["facts"])
    france = [pair for pair in pairs if pair["prompt"] == "What is the capital of France?"]
    assert france
    for pair in france:
        assert "Paris" in pair["chosen"]
        assert "Paris" not in pair["rejected"]


def has_markdown(text):
    return "**" in text or re.search(r"^(- |## )", text, flags=re.MULTILINE) is not None


def is_polite(text):
    return any(phrase in text for phrase in synthetic.POLITE_OPENERS + synthetic.POLITE_CLOSERS)


def test_decorations_are_visible_exactly_where_flagged():
    for pair in generate_pairs(2000, seed=5, format_rate=0.5, polite_rate=0.5):
        for side in ("chosen", "rejected"):
            assert has_markdown(pair[side]) == pair[f"{side}_formatted"], pair
            assert is_polite(pair[side]) == pair[f"{side}_polite"], pair


@pytest.mark.parametrize("decoration", ["formatted", "polite"])
@pytest.mark.parametrize("bias", [1.0, 0.0])
def test_one_sided_decoration_follows_bias(decoration, bias):
    kind = "format" if decoration == "formatted" else "polite"
    pairs = generate_pairs(2000, seed=0, **{f"{kind}_rate": 0.3, f"{kind}_bias": bias})
    one_sided = [pair for pair in pairs if pair[f"chosen_{decoration}"] != pair[f"rejected_{decoration}"]]
    assert len(one_sided) > 500  # 2 * 0.3 * 0.7 of 2000 is 840
    assert all(pair[f"chosen_{decoration}"] == (bias == 1.0) for pair in one_sided)


def test_neutral_bias_keeps_each_side_decorated_at_the_rate():
    pairs = generate_pairs(5000, seed=0, format_rate=0.3, polite_rate=0.3)
    for key in ("chosen_formatted", "rejected_formatted", "chosen_polite", "rejected_polite"):
        assert abs(sum(pair[key] for pair in pairs) / len(pairs) - 0.3) <= 0.03


def test_zero_rate_means_no_decoration():
    pairs = generate_pairs(500, seed=0, format_rate=0.0, polite_rate=0.0)
    assert not any(has_markdown(pair["chosen"]) or has_markdown(pair["rejected"]) for pair in pairs)
    assert not any(is_polite(pair["chosen"]) or is_polite(pair["rejected"]) for pair in pairs)


def test_tasks_restricts_the_families():
    pairs = generate_pairs(300, seed=0, tasks=["sorting", "facts"])
    assert {pair["task"] for pair in pairs} == {"sorting", "facts"}


def test_prompt_filter_is_honoured():
    def in_split(prompt):
        return len(prompt) % 10 == 0

    pairs = generate_pairs(300, seed=0, prompt_filter=in_split)
    assert len(pairs) == 300
    assert all(in_split(pair["prompt"]) for pair in pairs)


def test_prompt_filter_that_rejects_everything_raises():
    with pytest.raises(ValueError, match="prompt_filter"):
        generate_pairs(2, seed=0, prompt_filter=lambda prompt: False)


def test_prompt_space_is_large_enough_for_splits():
    prompts = {pair["prompt"] for pair in generate_pairs(20000, seed=0, format_rate=0.0, polite_rate=0.0)}
    assert len(prompts) >= 5000


@pytest.mark.parametrize("kwargs, name", [
    ({"n": -1}, "n"),
    ({"n": 2.5}, "n"),
    ({"length_bias": 1.5}, "length_bias"),
    ({"format_rate": -0.1}, "format_rate"),
    ({"format_bias": 2.0}, "format_bias"),
    ({"polite_rate": float("nan")}, "polite_rate"),
    ({"polite_bias": -1.0}, "polite_bias"),
    ({"verbosity": -1.0}, "verbosity"),
    ({"tasks": ["poetry"]}, "tasks"),
    ({"tasks": []}, "tasks"),
    ({"tasks": "facts"}, "tasks"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(kwargs, name):
    kwargs = {"n": 10, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} "):
        generate_pairs(**kwargs)


def test_unknown_task_error_lists_the_allowed_tasks():
    with pytest.raises(ValueError, match="unit_conversion"):
        generate_pairs(1, tasks=["poetry"])
