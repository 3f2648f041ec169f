"""Fields of the plain dataclass configs: a default plus the metadata a front end shows (help text, choices)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


def option(default: Any, help_text: str, **meta: Any) -> Any:
    """A dataclass field with a default and its help text (extra metadata: `choices`, `metavar`, `required`,
    `many`: the flag also takes a comma-separated list)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **meta})


def base_type(tp: Any) -> tuple[type, bool]:
    """(type, optional) of an annotation such as `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False
