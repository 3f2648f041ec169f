"""Upper bounds on what a request may ask for; anything beyond them is answered with a 4xx status (a full
queue of live model work: 503)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from fastapi import HTTPException
from starlette.concurrency import run_in_threadpool

T = TypeVar("T")

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
MAX_LIVE_QUEUE = 4
"""Most live requests (search, steering, CE) admitted at once, the running one included (503 beyond)."""


def as_dict() -> dict[str, float]:
    """The limits by lower-case name, as the pages read them from /api/info."""
    return {k.lower(): v for k, v in globals().items() if k.startswith("MAX_")}


class LiveQueue:
    """Admits at most `size` live requests; they wait for the model in the event loop, never in a worker
    thread, so that page and API requests always find a free thread. More are answered 503 at once."""

    def __init__(self, size: int = MAX_LIVE_QUEUE) -> None:
        self.size = size
        self.admitted = 0
        self._turn: asyncio.Lock | None = None

    async def run(self, work: Callable[[], T]) -> T:
        """Run `work()` in a worker thread once it is this request's turn on the model."""
        if self.admitted >= self.size:  # only the event loop's thread touches the count: no lock needed
            raise HTTPException(503, f"the model is busy with {self.admitted} requests; retry in a few seconds",
                                headers={"Retry-After": "2"})
        self.admitted += 1
        try:
            if self._turn is None:
                self._turn = asyncio.Lock()
            async with self._turn:
                return await run_in_threadpool(work)
        finally:
            self.admitted -= 1
