"""Checks for the numbers that configure layers, optimizers and adapters, where they enter."""

from __future__ import annotations

import math
import numbers

import numpy as np


def number(owner: str, name: str, value, low=None, high=None, *, above=False, below=False):
    """`value` as a finite Python number in [low, high] (open ends with above/below), or a ValueError."""
    if isinstance(value, (bool, str)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"{owner}: {name} must be a finite number{_range(low, high, above, below)}, got {value!r}"
        )
    v = int(value) if isinstance(value, numbers.Integral) else float(value)
    if (low is not None and (v <= low if above else v < low)) or (
        high is not None and (v >= high if below else v > high)
    ):
        raise ValueError(f"{owner}: {name} must be{_range(low, high, above, below)}, got {value!r}")
    return v


def integer(owner: str, name: str, value, low: int | None = None) -> int:
    """`value` as an int >= low (NumPy integers count; bools and floats do not), or a ValueError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or (low is not None and value < low)
    ):
        at_least = "" if low is None else f" >= {low}"
        raise ValueError(f"{owner}: {name} must be an integer{at_least}, got {value!r}")
    return int(value)


def flag(owner: str, name: str, value) -> bool:
    """`value` if it is a bool (NumPy's too), or a ValueError: 'no' or 0 are not switches."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def _range(low, high, above: bool, below: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"
    if low is not None:
        return f" {'>' if above else '>='} {low:g}"
    if high is not None:
        return f" {'<' if below else '<='} {high:g}"
    return ""
