"""Turn a plain dataclass config into argparse options and back (field `batch_size` → `--batch-size`).

The fields' help text and choices are their metadata (`featurescope.config_fields.option`)."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

from featurescope.config_fields import base_type

T = TypeVar("T")


def comma_list(kind: type) -> Any:
    """An argparse type: one `kind` value, or a list of them from "a,b,c" (a field with `many` metadata)."""

    def parse(text: str) -> Any:
        try:
            values = [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected one {kind.__name__} value or several, comma-separated "
                                             f"(such as 16,32,64), got {text!r}") from None
        return values[0] if len(values) == 1 else values

    parse.__name__ = kind.__name__
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, *, positional: tuple[str, ...] = (),
                       skip: tuple[str, ...] = ()) -> None:
    """Add one option per field of dataclass `cls`; fields named in `positional` become positional args."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        choices = f.metadata.get("choices")
        if f.name in positional:
            parser.add_argument(f.name, type=tp, help=help_text, metavar=f.name.upper())
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        kind: Any = str if tp not in (int, float, str) else tp
        metavar = f.metadata.get("metavar")
        if f.metadata.get("many"):
            kind, metavar = comma_list(kind), metavar or f"{f.name.upper()}[,...]"
        if f.metadata.get("required"):
            parser.add_argument(flag, dest=f.name, type=kind, required=True, choices=choices,
                                help=f"{help_text} (required)", metavar=metavar)
            continue
        parser.add_argument(flag, dest=f.name, type=kind, default=default, choices=choices,
                            help=_with_default(help_text, default, optional), metavar=metavar)


def _with_default(help_text: str, default: Any, optional: bool) -> str:
    """`help_text` plus its default, unless the text already says it or there is none to show."""
    if "(default" in help_text:
        return help_text
    if default is None and optional:
        return f"{help_text} (default: auto)"
    if default == "":
        return f"{help_text} (default: none)"
    return f"{help_text} (default: {default})"


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build `cls` from the parsed options that match its fields."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def dataclass_to_argv(obj: Any, *, skip: tuple[str, ...] = ()) -> list[str]:
    """The options that `add_dataclass_args` parses back into `obj` (fields left at their default omitted)."""
    argv: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if f.name in skip or value == default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            argv += [flag, repr(value) if isinstance(value, float) else str(value)]
    return argv
