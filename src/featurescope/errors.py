"""The one exception type for user mistakes and bad input."""

from __future__ import annotations

from collections.abc import Iterable


class FeaturescopeError(Exception):
    """A user mistake or bad input. The CLI prints it as one line and exits with status 2.

    A message names a setting by its config field in backticks (`` `epochs` must be at least 1``) and lists it in
    `settings`; a front end may write each in its own words (the CLI: `--epochs`).
    """

    def __init__(self, message: str = "", *, settings: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.settings: tuple[str, ...] = tuple(settings)
