"""Read-ahead of batches: the same batches, and a clean stop on an error, an interrupt or an early exit."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from featurescope.activations import TensorSource
from featurescope.prefetch import prefetch


def _source() -> TensorSource:
    return TensorSource(torch.randn(1000, 8, generator=torch.Generator().manual_seed(0)), chunk_size=130)


def _threads() -> int:
    return sum(t.name == "featurescope-prefetch" for t in threading.enumerate())


def test_prefetched_batches_are_the_same_batches():
    src = _source()
    for kw in ({}, {"epoch": 1, "start_batch": 3}):
        plain = list(src.batches(64, seed=1, **kw))
        ahead = list(prefetch(src.batches(64, seed=1, **kw), depth=3, device="cpu"))
        assert len(ahead) == len(plain) == 16 - kw.get("start_batch", 0)
        assert all(torch.equal(a, b) for a, b in zip(ahead, plain, strict=True))
    assert _threads() == 0


@pytest.mark.parametrize("error", [RuntimeError("disk"), KeyboardInterrupt()])
def test_an_error_in_the_reader_reaches_the_consumer_after_the_batches_before_it(error):
    closed = []

    def failing() -> Iterator[torch.Tensor]:
        try:
            yield from (torch.full((2,), float(i)) for i in range(3))
            raise error
        finally:
            closed.append(True)

    got = []
    with pytest.raises(type(error)):
        for b in prefetch(failing()):
            got.append(float(b[0]))
    assert got == [0.0, 1.0, 2.0] and closed == [True] and _threads() == 0


def test_leaving_early_or_failing_in_the_loop_stops_the_reader():
    made, closed = [], []

    def endless() -> Iterator[torch.Tensor]:
        try:
            while True:
                made.append(1)
                yield torch.zeros(2)
        finally:
            closed.append(True)

    it = prefetch(endless(), depth=2)
    for i, _ in enumerate(it):
        if i == 4:
            break
    it.close()
    assert closed == [True] and _threads() == 0 and len(made) <= 5 + 3
    with pytest.raises(KeyboardInterrupt):
        for _ in prefetch(endless()):
            raise KeyboardInterrupt  # Ctrl-C during a step
    assert closed == [True, True] and _threads() == 0
