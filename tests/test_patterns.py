"""Tests for the surface-pattern detectors: hand-made cases and the artifacts planted in synthetic data."""

import pytest

from rmlab.data.synthetic import POLITE_CLOSERS, POLITE_OPENERS, generate_pairs
from rmlab.text.patterns import PATTERNS, detect

CASES = {  # detector -> [(text, expected)]
    "markdown_list": [
        ("Steps:\n- mix\n- bake", True), ("* one\n* two", True), ("+ item", True), ("  - nested", True),
        ("1. first\n2. second", True), ("1. first\n\n2. second", True), ("1) a\n2) b", True),
        ("8. Let me know if you have any other questions!", False),  # a terse answer, then a sentence
        ("12 - 7 = 5", False), ("-5 degrees", False), ("**bold** text", False), ("Step 1. Mix.", False),
    ],
    "markdown_header": [
        ("# Title", True), ("## Answer\n\ntext", True), ("intro\n###### Six", True),
        ("#hashtag", False), ("####### seven", False), ("Use C# here", False), ("a # b", False),
    ],
    "bold": [
        ("This is **very** important", True), ("**The answer is 42**.", True), ("__bold__ words", True),
        ("** **", False), ("a ** b", False), ("2 ** 3 = 8", False), ("**", False), ("snake_case_name", False),
        ("*italic*", False),
    ],
    "code": [
        ("```python\nprint(1)\n```", True), ("Call `len(x)` first.", True),
        ("No code here.", False), ("``", False), ("It's a 'quote'.", False),
    ],
    "table": [
        ("| a | b |\n|---|---|\n| 1 | 2 |", True), ("a | b\n--- | :---:", True),
        ("one --- two", False), ("a | b", False), ("---", False),
    ],
    "link": [
        ("See [the docs](https://example.com).", True), ("Visit https://example.com today", True),
        ("See [the docs] later.", False), ("http is a protocol", False),
    ],
    "emoji": [("Nice 😀", True), ("Done ✅", True), ("I ❤ it", True), ("Plain text :)", False), ("Café", False)],
    "exclamation": [
        ("Wow!", True), ("Great!!", True), ("a != b", False), ("![image](x.png)", False), ("Calm.", False),
    ],
    "apology": [
        ("Sorry, I missed that.", True), ("I apologize for the error.", True), ("My apologies.", True),
        ("I apologise.", True), ("The sorrowful tale.", False), ("No regrets.", False),
    ],
    "refusal": [
        ("I can't help with that.", True), ("I cannot provide that information.", True),
        ("I'm sorry, but I cannot.", True), ("I won't do that.", True), ("I'm not able to share it.", True),
        ("I am unable to answer.", True), ("As an AI, I have no opinions.", True), ("I can’t assist.", True),
        ("I cannot stress this enough.", False), ("I can help with that.", False), ("Cannot divide by zero.", False),
        ("Ask an AI researcher.", False),
    ],
    "hedging": [
        ("It might rain.", True), ("You may need more.", True), ("Perhaps.", True), ("I think so.", True),
        ("It depends on the case.", True), ("I'm not sure.", True), ("Generally, yes.", True),
        ("The mayor spoke.", False), ("It is 42.", False), ("Mighty oaks grow.", False), ("Thinking hard.", False),
    ],
    "praise_opener": [
        ("Great question! It is 4.", True), ("What a wonderful question!", True), ("Happy to help! Here.", True),
        ("Thanks for asking! 4.", True), ("Certainly! Here it is.", True), ("Absolutely! Yes.", True),
        ("Of course! 4.", True), ("  **Great question!**", True), ("Wow, what a great question!", True),
        ("I'd be happy to help.", True),
        ("It is 4. Great question!", False), ("Certainly the answer is 4.", False), ("A question: why?", False),
    ],
    "politeness": [
        ("Please see below.", True), ("Thank you!", True), ("Thanks.", True), ("I hope this helps!", True),
        ("Hope that helps.", True), ("Glad to help.", True), ("Feel free to ask.", True),
        ("Let me know if you need more.", True), ("It is 4.", False), ("Pleased to meet you", False),
        ("Thankful for rain", False),
    ],
    "question_back": [
        ("It is 4. Does that make sense?", True), ("Want more? ", True), ('Did you mean "x?"', True),
        ("Why? Because it is 4.", False), ("It is 4.", False), ("Is a != b? No.", False),
    ],
}


def test_every_detector_has_cases():
    assert list(CASES) == list(PATTERNS)


@pytest.mark.parametrize("name,text,expected", [(name, t, e) for name, cases in CASES.items() for t, e in cases])
def test_detector(name, text, expected):
    assert PATTERNS[name](text) is expected


def test_detect_returns_every_detector_in_order():
    result = detect("## Hi\n\n- **Great** question!")
    assert list(result) == list(PATTERNS)
    found = [name for name, flag in result.items() if flag]
    assert found == ["markdown_list", "markdown_header", "bold", "exclamation"]


@pytest.mark.parametrize("opener", POLITE_OPENERS)
def test_synthetic_openers_are_praise(opener):
    assert PATTERNS["praise_opener"](f"{opener} 4.")


@pytest.mark.parametrize("closer", POLITE_CLOSERS)
def test_synthetic_closers_are_polite(closer):
    assert PATTERNS["politeness"](f"4. {closer}")


def test_detectors_recover_the_synthetic_flags():
    markdown = ("markdown_list", "markdown_header", "bold")
    for pair in generate_pairs(200, seed=0, format_rate=0.5, polite_rate=0.5):
        for side in ("chosen", "rejected"):
            found = detect(pair[side])
            # The three decorations (bullets, header, bolded answer) are exclusive: exactly one shows.
            assert sum(found[name] for name in markdown) == pair[f"{side}_formatted"], pair[side]
            # An opener-only "Great question!" carries no politeness phrase, hence the "or".
            assert (found["praise_opener"] or found["politeness"]) == pair[f"{side}_polite"], pair[side]
            # Every opener and closer ends in "!" and nothing else in the synthetic text does.
            assert found["exclamation"] == pair[f"{side}_polite"], pair[side]
            # Nothing else is planted; restated prompts end in "?" but never close a response.
            others = set(PATTERNS) - set(markdown) - {"praise_opener", "politeness", "exclamation"}
            assert not any(found[name] for name in others), (pair[side], found)
