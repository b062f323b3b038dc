"""The one range check behind every setting: the metadata vocabulary of the library's dataclass fields.

A field's ``metadata`` may hold ``choices``, ``min``/``max`` (inclusive), ``above``/``below`` (exclusive) and
``multiple_of``. The command line checks values with it while parsing (naming the option); the dataclasses check
the same values when built from Python (naming the field).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["out_of_range"]


def out_of_range(value: Any, metadata: Mapping[str, Any]) -> str | None:
    """What is wrong with ``value`` under ``metadata`` (e.g. ``"must be at least 1, got 0"``), or ``None``."""
    if value is None:
        return None
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be a finite number, got {value}"
    low, high = metadata.get("min"), metadata.get("max")
    above, below = metadata.get("above"), metadata.get("below")
    if low is not None and value < low:
        return f"must be at least {low}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high}, got {value}"
    if above is not None and not value > above:
        return f"must be greater than {above}, got {value}"
    if below is not None and not value < below:
        return f"must be less than {below}, got {value}"
    step = metadata.get("multiple_of")
    if step and value % step:
        return f"must be a multiple of {step}, got {value}"
    return None
