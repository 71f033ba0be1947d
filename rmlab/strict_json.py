"""JSON that strict parsers (`jq`, JavaScript, Go) accept: a missing or non-finite number is `null`.

Python's json writes NaN and Infinity, which are not JSON. Every JSON file rmlab writes goes
through `dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every NaN / ±Inf float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps of `finite(value)`; raises ValueError rather than ever writing NaN."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)
