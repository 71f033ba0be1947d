"""Procedural preference pairs with known correctness and planted style artifacts.

Each pair is a prompt, a correct answer (chosen) and a flawed one (rejected). Length, markdown
and politeness are decided independently of correctness, except for the tunable spurious
correlations (`length_bias`, `format_bias`, `polite_bias`). That makes this data both the offline
default for training and a ground truth for bias diagnostics: we know which artifacts were planted
and how strongly.

    from rmlab.data.synthetic import generate_pairs
    pairs = generate_pairs(1000, seed=0, length_bias=0.5)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

TASKS: tuple[str, ...] = ("arithmetic", "unit_conversion", "sorting", "counting", "facts")

# Templates use "{a}" for the answer; it is filled in last so markdown can bold it.
RESTATEMENTS = ("You asked: {prompt}", "To restate the question: {prompt}", "The question is: {prompt}")
# Filler is shared by correct and flawed answers and holds no digits, so it reveals nothing.
FILLERS = (
    "Let me think about this carefully.", "Here is how to approach it.",
    "This is a common kind of question.", "I went through it step by step.",
    "It helps to look at each part of the question.", "I checked the details before answering.",
    "The reasoning is short.", "That is the final answer.",
    "Nothing else needs to be considered here.", "This follows directly from the question.",
)
HEADERS = ("## Answer", "## Solution", "## Result")
POLITE_OPENERS = ("Great question!", "What a wonderful question!", "Happy to help!", "Thanks for asking!")
POLITE_CLOSERS = (
    "I hope this helps!", "Let me know if you have any other questions!", "Feel free to ask anything else!",
)

# Which flaw a rejected answer has, and how often. Most flaws show in the text itself when it is
# read next to the prompt (a number, unit, word or item that is not the one asked about), so a
# small encoder can learn correctness; the rest (off_by_one, wrong_number, wrong_factor, wrong_order,
# wrong_count, wrong_fact) need real arithmetic, counting or knowledge and stay hard on purpose.
FLAW_SHARES: dict[str, dict[str, float]] = {
    "arithmetic": {"misread_operand": 0.45, "misread_operator": 0.35, "off_by_one": 0.1, "wrong_number": 0.1},
    "unit_conversion": {"wrong_unit": 0.4, "wrong_quantity": 0.45, "wrong_factor": 0.15},
    "sorting": {"foreign_element": 0.45, "missing_element": 0.35, "unsorted": 0.1, "wrong_order": 0.1},
    "counting": {"wrong_list": 0.45, "wrong_thing": 0.35, "off_by_one": 0.1, "wrong_count": 0.1},
    "facts": {"off_topic": 0.75, "wrong_fact": 0.25},
}

ARITHMETIC_PROMPTS = {
    "+": ("What is {x} + {y}?", "What is {x} plus {y}?", "What is the sum of {x} and {y}?",
          "Add {x} and {y}.", "Compute {x} + {y}."),
    "-": ("What is {x} - {y}?", "What is {x} minus {y}?", "Compute {x} - {y}.", "Calculate {x} minus {y}."),
    "*": ("What is {x} * {y}?", "What is {x} times {y}?", "What is the product of {x} and {y}?",
          "Multiply {x} by {y}.", "Compute {x} * {y}."),
}
OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
}
# Every answer restates its equation ("12 + 7 = 19"), so a misread operand or operator is visible.
ARITHMETIC_SAY = ("{a}", "{a}.", "That gives {a}.", "Working it out: {a}.")
ARITHMETIC_EXPLAIN = ("Doing the arithmetic carefully gives {a}.", "So the result is {a}.")

CONVERSIONS = (  # (larger unit, smaller unit, how many smaller units make one larger)
    ("kilometres", "metres", 1000), ("metres", "centimetres", 100), ("centimetres", "millimetres", 10),
    ("kilograms", "grams", 1000), ("tonnes", "kilograms", 1000), ("litres", "millilitres", 1000),
    ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
    ("weeks", "days", 7), ("years", "months", 12), ("feet", "inches", 12),
)
UNITS = tuple(dict.fromkeys(unit for big, small, _ in CONVERSIONS for unit in (big, small)))
WRONG_FACTORS = (7, 10, 12, 24, 60, 100, 1000)
CONVERSION_PROMPTS = (
    "How many {small} are in {v} {big}?", "Convert {v} {big} to {small}.", "What is {v} {big} in {small}?",
    "Express {v} {big} in {small}.", "{v} {big} is how many {small}?",
)
# Answers restate quantity and units ("3 kilometres = 3000 metres").
CONVERSION_SAY = ("{a}", "{a}.", "The conversion gives {a}.", "Converted: {a}.")
CONVERSION_EXPLAIN = ("Multiplying by the size of the larger unit gives {a}.", "So {a}.")

WORDS = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "olive", "peach", "pear", "plum", "kiwi",
    "tiger", "zebra", "horse", "rabbit", "eagle", "otter", "camel", "panda", "chair", "table", "lamp", "clock",
    "mirror", "pencil", "basket", "candle", "window", "bottle", "river", "forest", "desert", "island", "valley",
)
SORT_PROMPTS = (  # (template, sorts numbers?, descending?)
    ("Sort these numbers from smallest to largest: {items}.", True, False),
    ("Put these numbers in ascending order: {items}.", True, False),
    ("Sort these numbers from largest to smallest: {items}.", True, True),
    ("Put these numbers in descending order: {items}.", True, True),
    ("Put these words in alphabetical order: {items}.", False, False),
    ("Sort these words alphabetically: {items}.", False, False),
    ("Sort these words in reverse alphabetical order: {items}.", False, True),
)
SORT_SAY = ("{a}", "{a}.", "Sorted: {a}.", "The sorted list is {a}.")
SORT_EXPLAIN = (
    "Comparing the items one pair at a time gives {a}.", "Putting each item in its place, the order is {a}.",
)

COUNT_DETERMINERS = ("the", "my", "our", "that", "this", "your")
COUNT_ADJECTIVES = ("old", "small", "happy", "quiet", "red", "tired", "clever", "brave", "lazy", "young")
COUNT_NOUNS = ("dog", "cat", "teacher", "child", "farmer", "bird", "driver", "painter", "neighbour", "baker")
COUNT_VERBS = ("chased", "found", "watched", "helped", "followed", "called", "visited", "greeted", "heard")
COUNT_ENDINGS = ("", "", "in the garden", "near the river", "after lunch", "before the storm", "at the market")
COUNT_SENTENCE_PROMPTS = (  # {unit} is "words" or "letters"
    'How many {unit} are in the sentence "{s}"?', 'Count the {unit} in this sentence: "{s}".',
    'How many {unit} does "{s}" contain?',
)
COUNT_LIST_PROMPTS = (
    "How many items are in this list: {s}?", "Count the items in this list: {s}.",
    "How many things are listed here: {s}?",
)
# Answers name what they counted and where ('6 words in "the old dog chased my cat"').
COUNT_SAY = ("{a}", "{a}.", "There are {a}.", "I count {a}.")
COUNT_EXPLAIN = ("Counting them one by one gives {a}.", "Going through them one at a time: {a}.")


class FactTable(NamedTuple):
    """A table of facts: question templates over key "{k}", a full-sentence answer, the facts."""

    questions: tuple[str, ...]
    answer: str
    facts: dict[str, str]


FACT_TABLES = {
    "capital": FactTable(
        ("What is the capital of {k}?", "Which city is the capital of {k}?", "Name the capital city of {k}.",
         "What city is the capital of {k}?"),
        "The capital of {k} is {a}.",
        {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
         "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Canada": "Ottawa",
         "Australia": "Canberra", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Mexico": "Mexico City",
         "Egypt": "Cairo", "Kenya": "Nairobi", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
         "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Ireland": "Dublin",
         "the Netherlands": "Amsterdam", "Belgium": "Brussels", "Austria": "Vienna", "Switzerland": "Bern",
         "Hungary": "Budapest", "Turkey": "Ankara", "Thailand": "Bangkok", "South Korea": "Seoul", "Peru": "Lima",
         "Chile": "Santiago", "Cuba": "Havana", "Iceland": "Reykjavik", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
         "Nigeria": "Abuja", "the United Kingdom": "London"}),
    "opposite": FactTable(
        ("What is the opposite of {k}?", 'What is the antonym of "{k}"?',
         "Name a word that means the opposite of {k}."),
        'The opposite of "{k}" is "{a}".',
        {"hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "tall": "short", "hard": "soft",
         "wet": "dry", "early": "late", "full": "empty", "rich": "poor", "strong": "weak", "loud": "quiet",
         "open": "closed", "clean": "dirty", "thick": "thin", "high": "low", "wide": "narrow", "deep": "shallow",
         "sharp": "blunt", "cheap": "expensive", "easy": "difficult", "safe": "dangerous", "bright": "dim",
         "heavy": "light", "smooth": "rough", "tight": "loose", "polite": "rude", "asleep": "awake",
         "alive": "dead", "first": "last", "good": "bad", "young": "old", "true": "false"}),
    "sound": FactTable(
        ("What sound does a {k} make?", "What noise does a {k} make?", "How does a {k} sound?"),
        "A {k} {a}.",
        {"dog": "barks", "cat": "meows", "cow": "moos", "sheep": "bleats", "horse": "neighs", "duck": "quacks",
         "pig": "oinks", "lion": "roars", "snake": "hisses", "owl": "hoots", "bee": "buzzes", "frog": "croaks",
         "wolf": "howls", "donkey": "brays", "mouse": "squeaks", "goose": "honks", "turkey": "gobbles",
         "dove": "coos", "crow": "caws"}),
    "colour": FactTable(
        ("What colour is {k}?", "What is the usual colour of {k}?", "Which colour is {k}?"),
        "The colour of {k} is {a}.",
        {"grass": "green", "snow": "white", "a ripe banana": "yellow", "a ripe tomato": "red", "coal": "black",
         "milk chocolate": "brown", "a carrot": "orange", "a lemon": "yellow", "milk": "white",
         "the clear daytime sky": "blue", "a strawberry": "red", "a lime": "green", "an eggplant": "purple",
         "a flamingo": "pink", "a polar bear": "white", "a crow": "black", "a pumpkin": "orange",
         "an emerald": "green", "a sapphire": "blue", "lavender": "purple", "a fire truck": "red"}),
    "symbol": FactTable(
        ("What is the chemical symbol for {k}?", "Which symbol stands for {k} on the periodic table?",
         "Give the chemical symbol of {k}."),
        "The chemical symbol for {k} is {a}.",
        {"hydrogen": "H", "helium": "He", "carbon": "C", "nitrogen": "N", "oxygen": "O", "sodium": "Na",
         "magnesium": "Mg", "aluminium": "Al", "silicon": "Si", "sulfur": "S", "chlorine": "Cl", "potassium": "K",
         "calcium": "Ca", "iron": "Fe", "copper": "Cu", "zinc": "Zn", "silver": "Ag", "gold": "Au", "tin": "Sn",
         "lead": "Pb", "mercury": "Hg", "neon": "Ne", "argon": "Ar", "iodine": "I", "nickel": "Ni",
         "platinum": "Pt"}),
    "legs": FactTable(
        ("How many legs does {k} have?", "Count the legs of {k}.", "What is the number of legs of {k}?"),
        "{k} has {a} legs.",
        {"a spider": "8", "an ant": "6", "a bee": "6", "a beetle": "6", "a butterfly": "6", "a dog": "4",
         "a cat": "4", "a horse": "4", "a cow": "4", "an elephant": "4", "a lion": "4", "a frog": "4",
         "a chicken": "2", "a duck": "2", "an ostrich": "2", "a penguin": "2", "a parrot": "2", "a snake": "0",
         "a crab": "10", "a scorpion": "8"}),
    "plural": FactTable(
        ("What is the plural of {k}?", 'What is the plural form of the word "{k}"?', "Give the plural of {k}."),
        'The plural of "{k}" is "{a}".',
        {"child": "children", "mouse": "mice", "goose": "geese", "foot": "feet", "tooth": "teeth", "man": "men",
         "woman": "women", "person": "people", "ox": "oxen", "sheep": "sheep", "deer": "deer", "cactus": "cacti",
         "leaf": "leaves", "knife": "knives", "wolf": "wolves", "half": "halves", "box": "boxes", "bus": "buses",
         "city": "cities", "baby": "babies", "potato": "potatoes", "hero": "heroes", "church": "churches",
         "party": "parties", "loaf": "loaves", "crisis": "crises", "phenomenon": "phenomena"}),
}
FACT_EXPLAIN = ("So the answer is {a}.", "This is a well-known fact: the answer is {a}.")


class _Draft(NamedTuple):
    """A pair before styling: answers plus sentence templates whose "{a}" takes the answer."""

    task: str
    prompt: str
    flaw: str
    good: str
    bad: str
    say: tuple[str, ...]  # terse answers
    explain: tuple[str, ...]  # extra sentences for the longer side
    others: tuple[tuple[str, str], ...] = ()  # more (flaw, flawed answer)s, for response sets


def _more_flaws(rng: random.Random, task: str, flawed: Callable[[str], str], good: str, bad: str, count: int,
                valid: Callable[[str], bool] = lambda answer: True) -> tuple[tuple[str, str], ...]:
    """`count` more flawed answers to the same prompt, each distinct from the correct one and from
    each other, drawn after everything a pair draws (so count=0 leaves generate_pairs as it was).
    Raises ValueError when the prompt has too few distinct flawed answers."""
    taken, out = {good, bad}, []
    for _ in range(100 * count):
        if len(out) == count:
            break
        flaw = _pick_flaw(rng, task)
        answer = flawed(flaw)
        if answer not in taken and valid(answer):
            taken.add(answer)
            out.append((flaw, answer))
    if len(out) < count:
        raise ValueError(f"found {len(out)} of {count} more distinct flawed answers to a {task} prompt; use a smaller k")
    return tuple(out)


def _pick_flaw(rng: random.Random, task: str) -> str:
    return rng.choices(list(FLAW_SHARES[task]), weights=list(FLAW_SHARES[task].values()))[0]


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "*":
        return rng.randint(2, 20), rng.randint(2, 12)
    x = rng.randint(10, 99)
    y = rng.randint(2, 99 if op == "+" else x - 1)
    # x != 2y keeps x - y from repeating an operand, so a restated question never holds the answer.
    while op == "-" and x == 2 * y:
        y = rng.randint(2, x - 1)
    return x, y


def _arithmetic(rng: random.Random, extra: int = 0) -> _Draft:
    op = rng.choice("+-*")
    x, y = _operands(rng, op)
    result = OPERATIONS[op](x, y)

    def flawed(flaw: str) -> str:
        return _flawed_arithmetic(rng, flaw, op, x, y, result)

    flaw = _pick_flaw(rng, "arithmetic")
    bad = flawed(flaw)
    prompt = rng.choice(ARITHMETIC_PROMPTS[op]).format(x=x, y=y)
    good = f"{x} {op} {y} = {result}"
    return _Draft("arithmetic", prompt, flaw, good, bad, ARITHMETIC_SAY, ARITHMETIC_EXPLAIN,
                  _more_flaws(rng, "arithmetic", flawed, good, bad, extra))


def _flawed_arithmetic(rng: random.Random, flaw: str, op: str, x: int, y: int, result: int) -> str:
    bad_x, bad_y, bad_op = x, y, op
    if flaw == "misread_operand":
        # Right arithmetic on a number that is not in the question.
        wrong = result
        while (bad_x, bad_y) == (x, y) or wrong < 0 or result in (wrong, bad_x, bad_y) or wrong in (x, y):
            other_x, other_y = _operands(rng, op)
            bad_x, bad_y = (other_x, y) if rng.random() < 0.5 else (x, other_y)
            wrong = OPERATIONS[op](bad_x, bad_y)
    elif flaw == "misread_operator":
        # Non-negative and different: "*" always qualifies for "+", "+" for "-", and "+" or "-" for "*".
        bad_op = rng.choice([o for o in OPERATIONS if o != op and OPERATIONS[o](x, y) not in (result, x, y)
                             and OPERATIONS[o](x, y) >= 0])
        wrong = OPERATIONS[bad_op](x, y)
    elif flaw == "off_by_one":
        wrong = result + rng.choice((-1, 1))
    else:
        wrong = rng.choice((result * 10, result + 10, result + rng.randint(3, 9)))
    return f"{bad_x} {bad_op} {bad_y} = {wrong}"


def _unit_conversion(rng: random.Random, extra: int = 0) -> _Draft:
    big, small, factor = rng.choice(CONVERSIONS)
    value = rng.randint(2, 250)

    def flawed(flaw: str) -> str:
        bad_value, bad_small, bad_factor = value, small, factor
        if flaw == "wrong_unit":
            bad_small = rng.choice([u for u in UNITS if u not in (big, small)])
        elif flaw == "wrong_quantity":
            while bad_value in (value, value * factor):
                bad_value = rng.randint(2, 250)
        else:
            bad_factor = rng.choice([f for f in WRONG_FACTORS + (factor * 10,) if f != factor])
        return f"{bad_value} {big} = {bad_value * bad_factor} {bad_small}"

    flaw = _pick_flaw(rng, "unit_conversion")
    bad = flawed(flaw)
    prompt = rng.choice(CONVERSION_PROMPTS).format(v=value, big=big, small=small)
    good = f"{value} {big} = {value * factor} {small}"
    return _Draft("unit_conversion", prompt, flaw, good, bad, CONVERSION_SAY, CONVERSION_EXPLAIN,
                  _more_flaws(rng, "unit_conversion", flawed, good, bad, extra))


def _sorting(rng: random.Random, extra: int = 0) -> _Draft:
    template, numeric, descending = rng.choice(SORT_PROMPTS)
    size = rng.randint(3, 6)  # short lists keep a foreign or missing item easy to spot
    pool = range(1, 100) if numeric else WORDS
    items = rng.sample(pool, size)
    ordered = sorted(items, reverse=descending)
    # An already sorted prompt would make the restated question contain the answer.
    while items == ordered or items == ordered[::-1]:
        rng.shuffle(items)

    def flawed(flaw: str) -> str:
        wrong = list(ordered)
        if flaw == "foreign_element":
            wrong[rng.randrange(size)] = rng.choice([item for item in pool if item not in items])
            wrong.sort(reverse=descending)
        elif flaw == "missing_element":
            del wrong[rng.randrange(size)]
        elif flaw == "unsorted":
            wrong = list(items)
        else:
            i = rng.randrange(size - 1)
            wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
        return ", ".join(map(str, wrong))

    flaw = _pick_flaw(rng, "sorting")
    good, bad = ", ".join(map(str, ordered)), flawed(flaw)
    # "2, 30, 40" hides inside "12, 30, 40": redraw rather than let a wrong answer contain the right one.
    if good in bad:
        return _sorting(rng, extra)
    prompt = template.format(items=", ".join(map(str, items)))
    return _Draft("sorting", prompt, flaw, good, bad, SORT_SAY, SORT_EXPLAIN,
                  _more_flaws(rng, "sorting", flawed, good, bad, extra, valid=lambda answer: good not in answer))


def _noun_phrase(rng: random.Random) -> list[str]:
    adjective = [rng.choice(COUNT_ADJECTIVES)] if rng.random() < 0.5 else []
    return [rng.choice(COUNT_DETERMINERS), *adjective, rng.choice(COUNT_NOUNS)]


def _count(unit: str, words: list[str]) -> int:
    return sum(map(len, words)) if unit == "letters" else len(words)


def _counted(unit: str, words: list[str], separator: str) -> str:
    return f'{_count(unit, words)} {unit} in "{separator.join(words)}"'


def _counting(rng: random.Random, extra: int = 0) -> _Draft:
    if rng.random() < 0.5:
        unit, separator = rng.choice(("words", "letters")), " "
        words = _noun_phrase(rng) + [rng.choice(COUNT_VERBS)] + _noun_phrase(rng)
        words += rng.choice(COUNT_ENDINGS).split()
        prompt = rng.choice(COUNT_SENTENCE_PROMPTS).format(unit=unit, s=" ".join(words))
        extras = [w for w in COUNT_ADJECTIVES if w not in words]
    else:
        unit, separator = "items", ", "
        words = rng.sample(WORDS, rng.randint(3, 9))
        prompt = rng.choice(COUNT_LIST_PROMPTS).format(s=", ".join(words))
        extras = [w for w in WORDS if w not in words]
    count = _count(unit, words)

    def flawed(flaw: str) -> str:
        if flaw == "wrong_list":
            # An honest count of a list that is not the one given: a word dropped or one added.
            wrong_words = list(words)
            if rng.random() < 0.5:
                del wrong_words[rng.randrange(len(words))]
            else:
                wrong_words.insert(rng.randrange(len(words) + 1), rng.choice(extras))
            return _counted(unit, wrong_words, separator)
        if flaw == "wrong_thing":
            # An honest count of something else: letters for words or items, words for letters.
            return _counted("words" if unit == "letters" else "letters", words, separator)
        if flaw == "off_by_one":
            wrong = count + rng.choice((-1, 1))
        else:
            wrong = count + rng.choice((-1, 1)) * rng.randint(2, 4)
            wrong = wrong if wrong > 0 else count + 2
        return f'{wrong} {unit} in "{separator.join(words)}"'

    flaw = _pick_flaw(rng, "counting")
    good, bad = _counted(unit, words, separator), flawed(flaw)
    return _Draft("counting", prompt, flaw, good, bad, COUNT_SAY, COUNT_EXPLAIN,
                  _more_flaws(rng, "counting", flawed, good, bad, extra))


def _facts(rng: random.Random, extra: int = 0) -> _Draft:
    table = FACT_TABLES[rng.choice(list(FACT_TABLES))]
    key, value = rng.choice(list(table.facts.items()))

    def flawed(flaw: str) -> str:
        if flaw == "wrong_fact":
            return rng.choice([v for v in table.facts.values() if v != value])
        # An answer from another table: clearly mismatched, so a small encoder can learn it.
        return rng.choice([v for t in FACT_TABLES.values() if t is not table for v in t.facts.values() if v != value])

    flaw = _pick_flaw(rng, "facts")
    answer = table.answer.format(k=key, a="{a}")
    answer = answer[0].upper() + answer[1:]
    prompt = rng.choice(table.questions).format(k=key)
    bad = flawed(flaw)
    say = ("{a}", "{a}.", answer)
    return _Draft("facts", prompt, flaw, value, bad, say, (answer,) + FACT_EXPLAIN,
                  _more_flaws(rng, "facts", flawed, value, bad, extra))


TASK_BUILDERS: dict[str, Callable[..., _Draft]] = {  # (rng, extra=0) -> a draft with `extra` more flawed answers
    "arithmetic": _arithmetic, "unit_conversion": _unit_conversion, "sorting": _sorting,
    "counting": _counting, "facts": _facts,
}


@dataclass
class _Response:
    """One side of a pair while it is being written."""

    answer: str
    sentences: list[str]
    markdown: str = ""  # "", "bold", "bullets" or "header"
    header: str = ""
    opener: str = ""
    closer: str = ""

    def render(self) -> str:
        answer = f"**{self.answer}**" if self.markdown == "bold" else self.answer
        lines = [s.replace("{a}", answer) for s in self.sentences]
        if self.markdown != "bullets" and (len(lines) > 1 or self.closer):
            # A terse answer such as "42" needs a full stop before the next sentence.
            lines = [line if line[-1] in ".!?" else line + "." for line in lines]
        if self.markdown == "bullets":
            body = "\n".join("- " + line for line in lines)
        else:
            body = " ".join(lines)
        if self.markdown == "header":
            body = f"{self.header}\n\n{body}"
        separator = "\n\n" if self.markdown in ("bullets", "header") else " "
        return separator.join(part for part in (self.opener, body, self.closer) if part)


def _decoration_flags(rng: random.Random, rate: float, bias: float) -> tuple[bool, bool]:
    """Decorate each side with P=rate; if only one side is, it is the chosen one with P=bias."""
    chosen, rejected = rng.random() < rate, rng.random() < rate
    if chosen != rejected:
        chosen = rng.random() < bias
        rejected = not chosen
    return chosen, rejected


def _decorate(rng: random.Random, response: _Response, formatted: bool, polite: bool) -> None:
    if formatted:
        response.markdown = rng.choice(("bold", "bullets", "header"))
        response.header = rng.choice(HEADERS)
    if polite:
        where = rng.choice(("opener", "closer", "both"))
        response.opener = rng.choice(POLITE_OPENERS) if where != "closer" else ""
        response.closer = rng.choice(POLITE_CLOSERS) if where != "opener" else ""


def _lengthen(rng: random.Random, draft: _Draft, response: _Response, verbosity: float, beat: int) -> None:
    """Add a restatement, explanations or filler, then filler until the text is longer than `beat`.

    Both answers draw from the same pools, so what is added says nothing about correctness.
    """
    explanations = [s for s in rng.sample(draft.explain, len(draft.explain)) if s not in response.sentences]
    fillers = rng.sample(FILLERS, len(FILLERS))  # drawn without repeats while they last
    restated = False
    for _ in range(round(verbosity * rng.uniform(1, 3))):
        kind = rng.choice(("restate", "explain", "filler"))
        if kind == "restate" and not restated:
            response.sentences.insert(0, rng.choice(RESTATEMENTS).format(prompt=draft.prompt))
            restated = True
        elif kind == "explain" and explanations:
            response.sentences.append(explanations.pop())
        else:
            response.sentences.append(fillers.pop() if fillers else rng.choice(FILLERS))
    # Decorations and answers differ in length, so pad until this side really is the longer one.
    while len(response.render()) <= beat:
        response.sentences.append(fillers.pop() if fillers else rng.choice(FILLERS))


def _style_pair(rng: random.Random, draft: _Draft, length_bias: float, verbosity: float,
                format_rate: float, format_bias: float, polite_rate: float, polite_bias: float) -> dict:
    chosen = _Response(draft.good, [rng.choice(draft.say)])
    rejected = _Response(draft.bad, [rng.choice(draft.say)])
    chosen_formatted, rejected_formatted = _decoration_flags(rng, format_rate, format_bias)
    chosen_polite, rejected_polite = _decoration_flags(rng, polite_rate, polite_bias)
    _decorate(rng, chosen, chosen_formatted, chosen_polite)
    _decorate(rng, rejected, rejected_formatted, rejected_polite)
    longer, shorter = (chosen, rejected) if rng.random() < length_bias else (rejected, chosen)
    _lengthen(rng, draft, longer, verbosity, beat=len(shorter.render()))
    chosen_text, rejected_text = chosen.render(), rejected.render()
    return {
        "prompt": draft.prompt, "chosen": chosen_text, "rejected": rejected_text,
        "task": draft.task, "flaw": draft.flaw,
        "chosen_longer": len(chosen_text) > len(rejected_text),
        "chosen_formatted": chosen_formatted, "rejected_formatted": rejected_formatted,
        "chosen_polite": chosen_polite, "rejected_polite": rejected_polite,
        "chosen_chars": len(chosen_text), "rejected_chars": len(rejected_text),
    }


def _check_args(
    n: int, verbosity: float, probabilities: dict[str, float], tasks: Sequence[str] | None
) -> tuple[str, ...]:
    """Raise ValueError naming the first bad argument; return the task names to draw from."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not verbosity >= 0:  # also rejects NaN
        raise ValueError(f"verbosity must be >= 0, got {verbosity!r}")
    for name, p in probabilities.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if tasks is None:
        return TASKS
    # A bare string is a Sequence too; iterating its letters would give a confusing error.
    if isinstance(tasks, str) or not tasks or any(t not in TASKS for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of names from {list(TASKS)}, got {tasks!r}")
    return tuple(dict.fromkeys(tasks))


def generate_pairs(
    n: int,
    seed: int = 0,
    length_bias: float = 0.8,
    verbosity: float = 1.0,
    format_rate: float = 0.3,
    format_bias: float = 0.5,
    polite_rate: float = 0.3,
    polite_bias: float = 0.5,
    tasks: Sequence[str] | None = None,
    prompt_filter: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Generate `n` preference pairs (chosen correct, rejected flawed) with planted style artifacts.

    length_bias is P(chosen is the longer text); verbosity scales the padding of the longer side.
    format_rate / polite_rate decorate each side independently; when exactly one side is decorated
    it is the chosen one with P=format_bias / polite_bias (0.5 plants no artifact).
    tasks restricts the task families (default: all of TASKS); prompt_filter keeps only pairs whose
    prompt it accepts, e.g. to split train/val/test by prompt. Same arguments, same pairs.
    """
    names = _check_args(n, verbosity, {
        "length_bias": length_bias, "format_rate": format_rate, "format_bias": format_bias,
        "polite_rate": polite_rate, "polite_bias": polite_bias,
    }, tasks)
    rng = random.Random(seed)
    pairs: list[dict] = []
    max_draws = 1000 * n
    draws = 0
    while len(pairs) < n:
        if draws >= max_draws:
            raise ValueError(f"prompt_filter accepted only {len(pairs)} of {n} pairs in {max_draws} draws; "
                             f"it rejects nearly every prompt of tasks {list(names)}")
        draws += 1
        draft = TASK_BUILDERS[rng.choice(names)](rng)
        if prompt_filter is None or prompt_filter(draft.prompt):
            pairs.append(_style_pair(rng, draft, length_bias, verbosity,
                                     format_rate, format_bias, polite_rate, polite_bias))
    return pairs


def _correct_rate(rate: float, bias: float) -> float:
    """P(the correct response is decorated) such that, in each (correct, flawed) pair of a set where
    exactly one response is decorated, the decorated one is the correct one with P=bias (flawed ones
    are decorated at `rate`): the artifact generate_pairs plants, pair by pair."""
    if rate in (0.0, 1.0):
        return rate
    return bias * rate / (bias * rate + (1 - bias) * (1 - rate))


def _style_set(rng: random.Random, draft: _Draft, length_bias: float, verbosity: float,
               format_rate: float, format_bias: float, polite_rate: float, polite_bias: float) -> dict:
    answers = [("", draft.good), (draft.flaw, draft.bad), *draft.others]  # the correct answer first
    responses = [_Response(answer, [rng.choice(draft.say)]) for _, answer in answers]
    formatted, polite = [], []
    for i, response in enumerate(responses):
        formatted.append(rng.random() < (_correct_rate(format_rate, format_bias) if i == 0 else format_rate))
        polite.append(rng.random() < (_correct_rate(polite_rate, polite_bias) if i == 0 else polite_rate))
        _decorate(rng, response, formatted[i], polite[i])
    # Each flawed response is shorter than the correct one with P=length_bias, independently; then
    # every response but the shortest is lengthened until it beats the one before it.
    shorter = [i for i in range(1, len(responses)) if rng.random() < length_bias]
    longer = [i for i in range(1, len(responses)) if i not in shorter]
    rng.shuffle(shorter)
    rng.shuffle(longer)
    order = [*shorter, 0, *longer]
    for previous, current in itertools.pairwise(order):
        _lengthen(rng, draft, responses[current], verbosity, beat=len(responses[previous].render()))
    places = list(range(len(responses)))  # where each response goes in the set: the correct one anywhere
    rng.shuffle(places)
    at = sorted(range(len(responses)), key=places.__getitem__)
    texts = [responses[i].render() for i in at]
    return {
        "prompt": draft.prompt, "responses": texts, "scores": [float(i == 0) for i in at],
        "task": draft.task, "flaws": [answers[i][0] for i in at], "correct_index": places[0],
        "correct_longest": max(range(len(texts)), key=lambda j: len(texts[j])) == places[0],
        "formatted": [formatted[i] for i in at], "polite": [polite[i] for i in at], "chars": [len(t) for t in texts],
    }


def generate_sets(
    n: int,
    k: int = 4,
    seed: int = 0,
    length_bias: float = 0.5,
    verbosity: float = 1.0,
    format_rate: float = 0.3,
    format_bias: float = 0.5,
    polite_rate: float = 0.3,
    polite_bias: float = 0.5,
    tasks: Sequence[str] | None = None,
    prompt_filter: Callable[[str], bool] | None = None,
) -> list[dict]:
    """Generate `n` response sets: per prompt, one correct answer and k - 1 distinct flawed ones (the
    pair generator's drafts, with more flaws drawn), in random order, with planted style artifacts.

    Each set is {prompt, responses, scores, task, flaws, correct_index, correct_longest, formatted,
    polite, chars}: `scores` is the known gold grade (1.0 correct, 0.0 flawed), `flaws` names each
    response's flaw ("" for the correct one), the last three are per response.
    The knobs keep generate_pairs' meaning, pair by pair: length_bias is P(the correct response is
    longer than a given flawed one), so length_bias < 0.5 plants "longer responses are more often
    wrong"; when exactly one of a (correct, flawed) pair is decorated, it is the correct one with
    P=format_bias / polite_bias. Same arguments, same sets. Raises ValueError for a bad argument, or a
    k larger than a prompt has distinct flawed answers.
    """
    names = _check_args(n, verbosity, {
        "length_bias": length_bias, "format_rate": format_rate, "format_bias": format_bias,
        "polite_rate": polite_rate, "polite_bias": polite_bias,
    }, tasks)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (responses per prompt), got {k!r}")
    rng = random.Random(seed)
    sets: list[dict] = []
    for _ in range(1000 * n):
        if len(sets) == n:
            return sets
        draft = TASK_BUILDERS[rng.choice(names)](rng, k - 2)
        if prompt_filter is None or prompt_filter(draft.prompt):
            sets.append(_style_set(rng, draft, length_bias, verbosity, format_rate, format_bias, polite_rate, polite_bias))
    if len(sets) == n:
        return sets
    raise ValueError(f"prompt_filter accepted only {len(sets)} of {n} sets in {1000 * n} draws; "
                     f"it rejects nearly every prompt of tasks {list(names)}")
