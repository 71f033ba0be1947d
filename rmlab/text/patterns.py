"""Surface-pattern detectors: does a response show a style cue a reward model might reward for itself?

Each detector is one regex, case-insensitive and word-boundary aware ("mayor" is not hedging,
a lone "**" is not bold), so a score's dependence on the cue can be measured apart from quality.

    from rmlab.text.patterns import detect
    detect("Great question! **42**")  # {"bold": True, "praise_opener": True, ...}
"""

from __future__ import annotations

import re
from collections.abc import Callable

_APOSTROPHE = "['’]"
# Verbs that turn "I can't" / "I won't" into a refusal rather than e.g. "I can't stress enough".
_REFUSED = r"(?:help|assist|provide|answer|do|comply|fulfill?|share|give|write|create|generate|support|discuss)"
_REFUSAL = (
    rf"\bi\s+(?:can{_APOSTROPHE}?t|cannot|can not|won{_APOSTROPHE}t|will not)(?:\s+{_REFUSED}\b|\s*[.!,]|\s*$)"
    rf"|\bi(?:{_APOSTROPHE}m| am)\s+(?:not able|unable)\s+to\b|\bas an ai\b|\bi must decline\b"
)
_HEDGES = (
    r"might|may|perhaps|possibly|probably|maybe|i think|i believe|i guess|i suppose|it depends|not sure"
    r"|not certain|generally|typically|usually|in general|it seems|seems to|could be|arguably"
)
_PRAISE = (
    r"(?:what an? |such an? )?(?:great|good|excellent|wonderful|fantastic|brilliant|interesting|amazing"
    r"|awesome|insightful|thoughtful) question"
    rf"|(?:i{_APOSTROPHE}d be |i{_APOSTROPHE}m )?(?:happy|glad|delighted) to help"
    r"|thanks? (?:you )?for (?:asking|your question|the question)"
    r"|(?:certainly|absolutely|of course|sure|definitely)!"
)
_POLITE = (
    rf"please|thank you|thanks|you{_APOSTROPHE}re welcome|hope (?:this|that|it) helps|glad to help"
    rf"|happy to help|feel free|let me know if|don{_APOSTROPHE}t hesitate"
)
_EMOJI = "[\U0001F300-\U0001FAFF\U0001F1E6-\U0001F1FF\u2600-\u27BF\u2B50\u2B55]"


def _finder(pattern: str) -> Callable[[str], bool]:
    regex = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    return lambda text: regex.search(text) is not None


PATTERNS: dict[str, Callable[[str], bool]] = {
    # One numbered line is not a list: a terse answer "8." gets a sentence after it ("8. Let me know...").
    "markdown_list": _finder(r"^[ \t]*[-*+][ \t]+\S|^[ \t]*\d{1,3}[.)][ \t]+\S.*\n(?:[ \t]*\n)*"
                             r"[ \t]*\d{1,3}[.)][ \t]+\S"),
    "markdown_header": _finder(r"^[ \t]{0,3}#{1,6}[ \t]+\S"),
    "bold": _finder(r"\*\*(?=\S)[^\n]*?(?<=\S)\*\*|(?<!\w)__(?=\S)[^\n]*?(?<=\S)__(?!\w)"),
    "code": _finder(r"^[ \t]*```|`[^`\n]+`"),
    "table": _finder(r"^[ \t]*\|?[ \t]*:?-{3,}:?[ \t]*(?:\|[ \t]*:?-{3,}:?[ \t]*)+\|?[ \t]*$"),
    "link": _finder(r"\[[^\]\n]+\]\([^)\s]+\)|\bhttps?://\S+"),
    "emoji": _finder(_EMOJI),
    "exclamation": _finder(r"!(?![=\[])"),  # not "!=" nor a markdown image "!["
    "apology": _finder(r"\b(?:sorry|apologi[sz]e|apologies)\b"),
    "refusal": _finder(_REFUSAL),
    "hedging": _finder(rf"\b(?:{_HEDGES})\b"),
    "praise_opener": _finder(rf"\A[\s#*_>\"']*(?:(?:wow|oh)\W+)?(?:{_PRAISE})"),
    "politeness": _finder(rf"\b(?:{_POLITE})\b"),
    "question_back": _finder(r"\?[\s\"'’”)*_]*\Z"),
}


def detect(text: str) -> dict[str, bool]:
    """Every detector's verdict on `text`, in the order of PATTERNS."""
    return {name: found(text) for name, found in PATTERNS.items()}
