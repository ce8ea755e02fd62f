"""CLI flags generated from `Recipe`'s fields, so the dataclass is the one source of truth.

Every flag defaults to None ("not given"), so the YAML recipe supplies the value unless the
user passes the flag.
"""

from __future__ import annotations

import argparse
import typing
from typing import Literal

from reviewgpt.recipe import field_types, flat_fields
from reviewgpt.recipe.fields import describe


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_recipe_flags(parser: argparse.ArgumentParser, skip=("name",)) -> None:
    group = parser.add_argument_group("recipe fields (override the YAML recipe)")
    hints = field_types()
    for f in flat_fields():  # the speed options (Recipe.speed) keep their flat flags
        if f.name in skip:
            continue
        hint = hints[f.name]
        help_text = f.metadata.get("help", "").replace("%", "%%")
        args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union and type(None) in args:
            hint = next(a for a in args if a is not type(None))
            args = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Union:  # e.g. an integer or "auto"
            group.add_argument(_flag(f.name), dest=f.name, type=_one_of(hint), default=None,
                               metavar=describe(hint).replace("an integer", "N").replace(" or ", "|").replace("'", ""),
                               help=help_text)
        elif hint is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(hint) is Literal:
            group.add_argument(_flag(f.name), dest=f.name, choices=list(args), default=None, help=help_text)
        elif typing.get_origin(hint) is tuple:
            group.add_argument(_flag(f.name), dest=f.name, default=None, metavar="A,B,...",
                               help=help_text + " (comma-separated)")
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=hint, default=None, help=help_text)


def _one_of(hint):
    """argparse type for a Union of int and Literal choices: '8' -> 8, 'auto' -> 'auto'."""
    choices = [v for member in typing.get_args(hint) if typing.get_origin(member) is Literal
               for v in typing.get_args(member)]

    def parse(text: str):
        if text in choices:
            return text
        if int in typing.get_args(hint) and text.strip().lstrip("-").isdigit():
            return int(text)
        raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}")

    parse.__name__ = describe(hint)
    return parse


def recipe_overrides(args: argparse.Namespace) -> dict:
    return {f.name: getattr(args, f.name, None) for f in flat_fields() if f.name != "name"}
