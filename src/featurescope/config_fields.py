"""Fields of the plain dataclass configs: a default plus the metadata a front end shows (help text, choices)."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help_text: str, **meta: Any) -> Any:
    """A dataclass field with a default and its help text (extra metadata: `choices`, `metavar`, `required`,
    `many`: the flag also takes a comma-separated list)."""
    return dataclasses.field(default=default, metadata={"help": help_text, **meta})
