"""Typed, range-checked dataclass fields for the recipe and its speed options: each field's help
text and accepted range live in its metadata, so the YAML checks, the error messages and the
`train` flags (reviewgpt.commands.recipe_flags) all come from the dataclass.

Imports nothing from reviewgpt but errors.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple

from reviewgpt.errors import UserError


@dataclass(frozen=True)
class Range:
    """The numbers a field accepts: bounds inclusive unless `*_open`; `also` lists single values
    allowed outside them (max_steps' -1)."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    also: Tuple[float, ...] = ()

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.low_open else '>='} {self.low}"
        else:
            text = f"{'<' if self.high_open else '<='} {self.high}"
        return " or ".join([*(str(v) for v in self.also), text])

    def contains(self, value) -> bool:
        if value in self.also:
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


AT_LEAST_1 = Range(1)
AT_LEAST_0 = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)


def help_field(text: str, range: Optional[Range] = None, **kwargs):
    return field(metadata={"help": text, **({"range": range} if range else {})}, **kwargs)


def range_problem(f: dataclasses.Field, hint, value, choices: Optional[tuple] = None) -> Optional[str]:
    """What is wrong with `value` for dataclass field `f` of type `hint` ("must be >= 1, got 0"), or
    None. `choices` (else a Literal's values) is the whole list of accepted values."""
    if choices is None and typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
    if choices is not None and value not in choices:
        return f"must be one of {list(choices)}, got {value!r}"
    allowed = f.metadata.get("range")
    if allowed is not None and isinstance(value, (int, float)) and not allowed.contains(value):
        return f"must be {allowed.describe()}, got {value!r}"
    return None


def check_ranges(instance, prefix: str = "") -> None:
    """Raise ValueError("PREFIXfield must be ..., got ...") for the first field of the dataclass
    `instance` whose value is out of its range (a frozen options dataclass's __post_init__)."""
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        problem = range_problem(f, hints[f.name], getattr(instance, f.name))
        if problem:
            raise ValueError(f"{prefix}{f.name} {problem}")


def describe(hint) -> str:
    """'an integer or 'auto'' for LayerCount, and so on: for error messages."""
    if typing.get_origin(hint) is typing.Union:
        return " or ".join(describe(member) for member in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def coerce(value, hint, where: str):
    """Check a YAML or flag value against the field's type (`where` names it: 'FILE: field' or '--flag');
    YAML '2e-4' (a string!) is caught here."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # e.g. LayerCount: an integer or "auto"
        for member in args:
            try:
                return coerce(value, member, where)
            except UserError:
                continue
        raise UserError(f"{where} must be {describe(hint)}, got {value!r}.")
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where} must be one of {list(args)}, got {value!r}.")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where} must be a list of strings, got {value!r}.")
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(
                f"{where} must be a number, got {value!r} (write YAML floats with a dot, e.g. 2.0e-4)."
            )
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{where} must be a string, got {value!r}.")
        return value
    return value


