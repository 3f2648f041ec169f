"""The one exception type for user mistakes and bad input."""

from __future__ import annotations


class FeaturescopeError(Exception):
    """A user mistake or bad input. The CLI prints it as one line and exits with status 2."""
