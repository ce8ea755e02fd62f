"""CLI subcommands: each module has `register(subparsers)` and a `run(args)`.

Numeric flags get their range from `int_flag` / `float_flag` (argparse types): a bad number stops
before any work with one line that names the flag, and exit status 2.
"""

from __future__ import annotations

import argparse
import math
from typing import Optional


def _number_type(kind, what: str, low, high, low_open: bool, high_open: bool):
    from reviewgpt.recipe.fields import Range

    allowed = Range(low, high, low_open, high_open)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (kind is float and not math.isfinite(value)) or not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"must be {allowed.describe()}, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def int_flag(low: Optional[int] = None, high: Optional[int] = None):
    """argparse type: an integer in [low, high]."""
    return _number_type(int, "an integer", low, high, False, False)


def float_flag(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
               high_open: bool = False):
    """argparse type: a finite number between low and high (inclusive unless *_open)."""
    return _number_type(float, "a number", low, high, low_open, high_open)
