"""Option checks shared by the poolers: each raises a UsageError naming the option and the valid range."""

from __future__ import annotations

from poolx.errors import UsageError


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def probability(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UsageError(f"{name} must be a probability in [0, 1), got {value!r}")
    return float(value)
