"""Upper bounds on what a request may ask for; anything beyond them is answered with a 4xx status."""

from __future__ import annotations

MAX_BODY_BYTES = 64 * 1024
"""Largest request body accepted (413 beyond)."""
MAX_TEXT_CHARS = 4000
"""Longest text for live search and longest steering prompt."""
MAX_QUERY_CHARS = 200
"""Longest label-search query."""
MAX_LIST = 500
"""Most features one listing or label search returns."""
MAX_NEIGHBOURS = 100
"""Most neighbours one request returns."""
MAX_HITS = 50
"""Most features a live text search returns."""
MAX_NEW_TOKENS = 200
"""Most tokens one steering request generates."""
MAX_STEER_FEATURES = 8
"""Most features steered at once."""
MAX_SWEEP_COLUMNS = 6
"""Most steered continuations one streamed steering request generates (besides the baseline)."""
MAX_GENERATIONS = 2
"""Most streamed generations that run at once (503 beyond)."""
MAX_ABS_STEER = 1e6
"""Largest absolute steering value or multiple."""
MAX_CE_CONTEXTS = 32
"""Most contexts a live CE-loss-recovered measurement runs."""


def as_dict() -> dict[str, float]:
    """The limits by lower-case name, as the pages read them from /api/info."""
    return {k.lower(): v for k, v in globals().items() if k.startswith("MAX_")}
