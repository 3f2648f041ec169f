"""Read ahead: the batches of an iterator made by a background thread while the caller computes on the previous ones.

`prefetch(batches, device=...)` yields the same tensors in the same order as `batches`. A thread runs the
iterator `depth` items ahead (reading shards, shuffling: work that releases the GIL), so on a GPU the next batch
is ready when a step ends. On CUDA each CPU batch is copied from pinned memory on a side stream, without
blocking, and the consumer's stream waits for that copy only (a double buffer when `depth` is 2). An exception
in the iterator (KeyboardInterrupt included) is raised in the consumer at the item where it happened; leaving
the loop early, or an error in the consumer, stops the thread and closes the iterator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor

DEPTH = 2
"""Batches made ahead of the one in use."""
_POLL = 0.1
"""Seconds between the producer's checks that the consumer still wants batches."""


class _End:
    """The iterator ran out."""


class _Failed:
    """The iterator raised `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _to_device(batch: Tensor, device: torch.device, stream: torch.cuda.Stream) -> tuple[Tensor, torch.cuda.Event]:
    """`batch` on CUDA `device`, copied on `stream` (from pinned memory if it is on the CPU); the copy's event."""
    with torch.cuda.stream(stream):
        if batch.device.type == "cpu":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
    return batch, event


def prefetch(batches: Iterator[Tensor], *, depth: int = DEPTH, device: torch.device | str | None = None
             ) -> Iterator[Tensor]:
    """The items of `batches`, made up to `depth` ahead by a background thread (on `device` if it is a CUDA one)."""
    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    stream = torch.cuda.Stream(dev) if cuda else None
    ready: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                item: object = (batch, None) if stream is None else _to_device(batch, dev, stream)  # type: ignore[arg-type]
                if not put(item):
                    return
            put(_End())
        except BaseException as e:  # KeyboardInterrupt too: the consumer raises it
            put(_Failed(e))
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="featurescope-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failed):
                raise item.error
            batch, event = cast("tuple[Tensor, torch.cuda.Event | None]", item)
            if event is not None:
                current = torch.cuda.current_stream(dev)
                current.wait_event(event)
                batch.record_stream(current)  # its memory, freed by the producer's stream, waits for this one
            yield batch
    finally:
        stop.set()
        thread.join()
