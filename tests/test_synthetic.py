"""Tests for the synthetic preference-pair generator: correctness of answers and planted artifacts."""

import random
import re
from collections import Counter

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


OPERATIONS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y}


def asked_operation(prompt):
    """The operator the prompt asks for, as a symbol."""
    text = prompt.lower()
    if any(word in text for word in ("+", "plus", "sum", "add")):
        return "+"
    if any(word in text for word in ("-", "minus")):
        return "-"
    assert any(word in text for word in ("*", "times", "product", "multiply")), prompt
    return "*"


def arithmetic_answer(prompt):
    x, y = numbers(prompt)
    return OPERATIONS[asked_operation(prompt)](x, y)


def asked_conversion(prompt):
    """(value, larger unit, smaller unit, factor) of a conversion prompt."""
    (value,) = numbers(prompt)
    words = set(re.findall(r"[a-z]+", prompt.lower()))
    ((big, small, factor),) = [(b, s, f) for (b, s), f in UNIT_FACTORS.items() if b in words and s in words]
    return value, big, small, factor


def conversion_answer(prompt):
    value, _, _, factor = asked_conversion(prompt)
    return value * factor


def sorted_answer(prompt):
    items = prompt.split(": ", 1)[1].rstrip(".").split(", ")
    descending = any(word in prompt for word in ("largest to smallest", "descending", "reverse"))
    if all(item.isdigit() for item in items):
        return ", ".join(map(str, sorted(map(int, items), reverse=descending)))
    return ", ".join(sorted(items, reverse=descending))


def counted_text(prompt):
    """(what to count, the words or items it is counted over) of a counting prompt."""
    quoted = re.search(r'"([^"]+)"', prompt)
    if quoted:
        return ("letters" if "letters" in prompt else "words"), quoted.group(1).split()
    return "items", prompt.split(": ", 1)[1].rstrip("?.").split(", ")


def honest_count(unit, words):
    return sum(char.isalpha() for word in words for char in word) if unit == "letters" else len(words)


def count_answer(prompt):
    return honest_count(*counted_text(prompt))


def sort_request(prompt):
    """(items as given, descending?) of a sorting prompt; numbers come back as ints."""
    items = prompt.split(": ", 1)[1].rstrip(".").split(", ")
    descending = any(word in prompt for word in ("largest to smallest", "descending", "reverse"))
    return ([int(item) for item in items] if all(item.isdigit() for item in items) else items), descending


def drafts(task, n=1000, seed=0):
    """Unstyled pairs straight from a task builder: the bare answers, before filler and markdown."""
    rng = random.Random(seed)
    return [synthetic.TASK_BUILDERS[task](rng) for _ in range(n)]


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
        ("arithmetic", "misread_operand"), ("arithmetic", "misread_operator"),
        ("arithmetic", "off_by_one"), ("arithmetic", "wrong_number"),
        ("unit_conversion", "wrong_unit"), ("unit_conversion", "wrong_quantity"), ("unit_conversion", "wrong_factor"),
        ("sorting", "foreign_element"), ("sorting", "missing_element"), ("sorting", "unsorted"),
        ("sorting", "wrong_order"),
        ("counting", "wrong_list"), ("counting", "wrong_thing"),
        ("counting", "off_by_one"), ("counting", "wrong_count"),
        ("facts", "wrong_fact"), ("facts", "off_topic"),
    }
    assert {task: set(shares) for task, shares in synthetic.FLAW_SHARES.items()} == {
        task: {flaw for t, flaw in flaws if t == task} for task in TASKS
    }


@pytest.mark.parametrize("task, answer", [("arithmetic", arithmetic_answer), ("counting", count_answer)])
def test_numeric_answers_are_correct_in_chosen_and_absent_from_rejected(task, answer):
    for pair in generate_pairs(1000, seed=2, tasks=[task]):
        correct = answer(pair["prompt"])
        assert correct in numbers(pair["chosen"]), pair
        assert correct not in numbers(pair["rejected"]), pair


def test_chosen_restates_the_asked_equation_and_counted_unit():
    for pair in generate_pairs(300, seed=2, tasks=["arithmetic"]):
        x, y = numbers(pair["prompt"])
        assert f"{x} {asked_operation(pair['prompt'])} {y} = {arithmetic_answer(pair['prompt'])}" in pair["chosen"]
    for pair in generate_pairs(300, seed=2, tasks=["counting"]):
        unit, _ = counted_text(pair["prompt"])
        assert f"{count_answer(pair['prompt'])} {unit} in " in pair["chosen"], pair


def test_conversion_is_correct_in_chosen_and_absent_from_rejected():
    # Number and unit together: a wrong_unit answer keeps the right number with another unit.
    for pair in generate_pairs(1000, seed=2, tasks=["unit_conversion"]):
        _, _, small, _ = asked_conversion(pair["prompt"])
        correct = rf"\b{conversion_answer(pair['prompt'])} {small}\b"
        assert re.search(correct, pair["chosen"]), pair
        assert not re.search(correct, pair["rejected"]), pair


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
    assert count_answer('How many letters are in the sentence "the old dog sat"?') == 12
    assert count_answer("How many items are in this list: pear, plum, kiwi?") == 3


def test_facts_chosen_holds_the_table_value_for_a_known_prompt():
    pairs = generate_pairs(3000, seed=0, tasks=["facts"])
    france = [pair for pair in pairs if pair["prompt"] == "What is the capital of France?"]
    assert france
    for pair in france:
        assert "Paris" in pair["chosen"]
        assert "Paris" not in pair["rejected"]


EQUATION = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+)")


def test_arithmetic_flaws_show_what_was_misread():
    for draft in drafts("arithmetic"):
        x, y = numbers(draft.prompt)
        op = asked_operation(draft.prompt)
        assert draft.good == f"{x} {op} {y} = {OPERATIONS[op](x, y)}"
        bad_x, bad_op, bad_y, bad_result = EQUATION.fullmatch(draft.bad).groups()
        bad_x, bad_y, bad_result = int(bad_x), int(bad_y), int(bad_result)
        if draft.flaw == "misread_operand":  # right sum of a number the prompt does not hold
            assert bad_op == op and bad_result == OPERATIONS[op](bad_x, bad_y)
            assert (bad_x == x) != (bad_y == y)
            assert ({bad_x, bad_y} - {x, y}).isdisjoint(numbers(draft.prompt))
        elif draft.flaw == "misread_operator":  # right numbers, another operation, done right
            assert (bad_x, bad_y) == (x, y) and bad_op != op
            assert bad_result == OPERATIONS[bad_op](x, y) >= 0
        else:  # the asked equation with a wrong result
            assert (bad_x, bad_op, bad_y) == (x, op, y)
            distance = abs(bad_result - OPERATIONS[op](x, y))
            assert distance == 1 if draft.flaw == "off_by_one" else distance > 1, draft


def test_conversion_flaws_use_another_unit_quantity_or_factor():
    for draft in drafts("unit_conversion"):
        value, big, small, factor = asked_conversion(draft.prompt)
        assert draft.good == f"{value} {big} = {value * factor} {small}"
        bad_value, bad_big, bad_number, bad_unit = re.fullmatch(r"(\d+) ([a-z]+) = (\d+) ([a-z]+)", draft.bad).groups()
        bad_value, bad_number = int(bad_value), int(bad_number)
        assert bad_big == big
        if draft.flaw == "wrong_unit":  # the right number, named in a unit the prompt never mentions
            assert (bad_value, bad_number) == (value, value * factor)
            assert bad_unit not in re.findall(r"[a-z]+", draft.prompt)
        elif draft.flaw == "wrong_quantity":  # a right conversion of a value that was not asked about
            assert bad_unit == small and bad_number == bad_value * factor
            assert bad_value not in numbers(draft.prompt)
        else:
            assert draft.flaw == "wrong_factor"
            assert bad_unit == small and bad_value == value and bad_number != value * factor


def test_sorting_flaws_add_drop_or_leave_items_unsorted():
    for draft in drafts("sorting"):
        items, descending = sort_request(draft.prompt)
        ordered = sorted(items, reverse=descending)
        assert draft.good == ", ".join(map(str, ordered))
        bad = [int(item) if isinstance(items[0], int) else item for item in draft.bad.split(", ")]
        if draft.flaw == "foreign_element":  # sorted, same size, exactly one item not in the prompt
            assert bad == sorted(bad, reverse=descending) and len(bad) == len(items)
            assert len([item for item in bad if item not in items]) == 1
        elif draft.flaw == "missing_element":  # sorted, one prompt item left out
            assert bad == [item for item in ordered if item in bad] and len(bad) == len(items) - 1
        elif draft.flaw == "unsorted":  # handed back in the prompt's order
            assert bad == items
        else:
            assert draft.flaw == "wrong_order"  # the right items with one neighbouring pair swapped
            assert sorted(bad, reverse=descending) == ordered
            assert sum(a != b for a, b in zip(bad, ordered)) == 2


def test_counting_flaws_count_another_list_or_another_thing():
    counted = re.compile(r'(\d+) ([a-z]+) in "(.*)"')
    for draft in drafts("counting"):
        unit, words = counted_text(draft.prompt)
        separator = ", " if unit == "items" else " "
        assert draft.good == f'{honest_count(unit, words)} {unit} in "{separator.join(words)}"'
        bad_number, bad_unit, bad_text = counted.fullmatch(draft.bad).groups()
        bad_number, bad_words = int(bad_number), bad_text.split(separator)
        if draft.flaw == "wrong_list":  # an honest count of a list with one word dropped or added
            assert bad_unit == unit and bad_number == honest_count(unit, bad_words)
            dropped, added = Counter(words) - Counter(bad_words), Counter(bad_words) - Counter(words)
            assert sorted([dropped.total(), added.total()]) == [0, 1], draft
        elif draft.flaw == "wrong_thing":  # an honest count of the wrong kind of thing
            assert bad_words == words and bad_unit != unit and bad_unit in ("words", "letters")
            assert bad_number == honest_count(bad_unit, words)
        else:  # the right list and unit, a wrong number
            assert (bad_unit, bad_words) == (unit, words)
            distance = abs(bad_number - honest_count(unit, words))
            assert distance == 1 if draft.flaw == "off_by_one" else distance > 1, draft


def fact_table(prompt):
    """The name of the table whose question the prompt is."""
    (name,) = {name for name, table in synthetic.FACT_TABLES.items()
               for question in table.questions for key in table.facts if question.format(k=key) == prompt}
    return name


def test_fact_flaws_answer_from_the_same_or_another_table():
    for draft in drafts("facts", n=500):
        name = fact_table(draft.prompt)
        values = set(synthetic.FACT_TABLES[name].facts.values())
        assert draft.good in values and draft.bad != draft.good
        assert (draft.bad in values) == (draft.flaw == "wrong_fact"), draft


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
