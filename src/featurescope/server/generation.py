"""Streamed generations for the explorer: each runs in its own worker thread, yields the model between tokens,
and can be cancelled.

- Greedy (temperature 0): every column in one batch, row i steered by column i's hook (`RowHooks`), so the
  baseline and all steered columns grow side by side. Sampled: column by column, each after seeding with the
  same seed (as `steering.generate` does), so the columns stay comparable.

- `FairLock`: the model lock, first come first served. A generation releases it after every token and
  queues again, so a text search sent meanwhile waits for one token step, not for the whole generation.
- Steering hooks stay registered on the model between a generation's tokens; `ThreadOnly` makes them act
  on the generating thread's forward passes only, so a search run in that gap is never steered.
- Each job restores its own torch RNG state when it resumes, so overlapping sampled generations still
  reproduce their seeds.
- `Jobs` bounds how many generations run at once (`MAX_GENERATIONS`); beyond that `Busy` (answered 503).
"""

from __future__ import annotations

import itertools
import queue
import secrets
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.server.limits import MAX_GENERATIONS


class Busy(FeaturescopeError):
    """Too many generations are running (answered with 503)."""


class FairLock:
    """A FIFO lock: `acquire` waits its turn behind every thread that asked before it. Use with `with`."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._tickets = itertools.count()
        self._queue: deque[int] = deque()
        self._held = False

    def acquire(self) -> None:
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            while self._held or self._queue[0] != ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held = True

    def release(self) -> None:
        with self._cond:
            if not self._held:
                raise RuntimeError("release of an unheld FairLock")
            self._held = False
            self._cond.notify_all()

    def waiting(self) -> int:
        """Threads queued for the lock."""
        with self._cond:
            return len(self._queue)

    def __enter__(self) -> FairLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ThreadOnly:
    """`fn` applied on the thread that made this object only; other threads' calls pass `args[0]` through
    (a block-output edit) or return None (a pre-hook)."""

    def __init__(self, fn: Callable[..., Any], passthrough: bool) -> None:
        self.fn, self.passthrough, self.owner = fn, passthrough, threading.get_ident()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == self.owner:
            return self.fn(*args, **kwargs)
        return args[0] if self.passthrough else None


@contextmanager
def attach_here(model: Any, edit: Callable[[Tensor], Tensor], layer: int,
                record: Callable[..., None] | None = None) -> Iterator[None]:
    """`steering.hook.attach` for the calling thread only (see `ThreadOnly`): `edit` on block `layer`, and
    `record` (the token-id recorder) as the input embedding's pre-hook."""
    with ExitStack() as stack:
        embedding = model.hf.get_input_embeddings()
        if record is not None and embedding is not None:
            handle = embedding.register_forward_pre_hook(ThreadOnly(record, False), with_kwargs=True)
            stack.callback(handle.remove)
        stack.enter_context(model.splice(layer, ThreadOnly(edit, True)))
        yield


class RowHooks:
    """A block-output edit for a batch whose row i is column i: each row edited by its own steering hook
    (None: left as is, the baseline). Register `record` as the input embedding's pre-hook so that hooks which
    leave special tokens unedited see their row's token ids."""

    def __init__(self, hooks: list[Any]) -> None:
        self.hooks = hooks
        self.ids: Tensor | None = None

    def record(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else next(iter(kwargs.values()), None)
        self.ids = ids if isinstance(ids, Tensor) and not ids.is_floating_point() else None

    def __call__(self, h: Tensor) -> Tensor:
        rows = []
        for i, hook in enumerate(self.hooks):
            if hook is None:
                rows.append(h[i:i + 1])
                continue
            if self.ids is not None and tuple(self.ids.shape) == tuple(h.shape[:2]):
                hook.tokens.ids = self.ids[i:i + 1]
            rows.append(hook(h[i:i + 1]))
        return torch.cat(rows)


class Column(NamedTuple):
    """One continuation to generate: a title, and the steering hook (None: the baseline)."""

    title: str
    hook: Any
    values: dict[int, float]
    auto: dict[int, dict[str, Any]]
    """For each feature given `auto`: the chosen multiple and the reason, in words."""


class Job:
    """One streamed generation in a worker thread; `next_event` returns its events (token, column, done,
    error) as they happen."""

    def __init__(self, jobs: Jobs, model: Any, lock: FairLock, ids: Tensor, prompt: str, columns: list[Column],
                 kwargs: dict[str, Any], seed: int, layer: int) -> None:
        self.id = secrets.token_hex(8)
        self.jobs, self.model, self.lock = jobs, model, lock
        self.ids, self.prompt, self.columns = ids, prompt, columns
        self.kwargs, self.seed, self.layer = kwargs, seed, layer
        self.cancelled = threading.Event()
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"featurescope-generation-{self.id}", daemon=True)

    def cancel(self) -> None:
        """Stop the generation at its next token (no-op once finished)."""
        self.cancelled.set()

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next event, or None if none came within `timeout` seconds."""
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _put(self, event: str, **fields: Any) -> None:
        self.queue.put({"event": event, **fields})

    def _pause(self) -> None:
        """Let anyone queued for the model go first, then resume with this job's RNG state."""
        rng = torch.get_rng_state()
        self.lock.release()
        self.lock.acquire()
        torch.set_rng_state(rng)

    def _streaming(self, start: int, columns: list[int],
                   length: Callable[[Tensor], int]) -> tuple[dict[str, Any], list[str]]:
        """The generation kwargs and the text sent so far by row. Their stopping criterion sends each row's new
        text after every token (row r is column `columns[r]`, its new tokens the first `length(row)` after
        `start`), then lets anyone queued for the model go first, and stops the generation once cancelled."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        from featurescope.steering.generate import decode

        shown, job = [""] * len(columns), self

        class Step(StoppingCriteria):
            def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
                for r, column in enumerate(columns):
                    text = decode(job.model, input_ids[r, start:start + length(input_ids[r])])
                    if text.startswith(shown[r]) and len(text) > len(shown[r]):
                        job._put("token", column=column, text=text[len(shown[r]):])
                        shown[r] = text
                stop = job.cancelled.is_set()
                if not stop:
                    job._pause()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        return {**self.kwargs, "stopping_criteria": StoppingCriteriaList([Step()])}, shown

    def _column(self, index: int, column: Column) -> int:
        from featurescope.steering.generate import decode

        start = self.ids.shape[1]
        kwargs, shown = self._streaming(start, [index], lambda row: len(row) - start)
        torch.manual_seed(self.seed)
        with torch.inference_mode(), ExitStack() as stack:
            if column.hook is not None:
                hook = column.hook
                stack.enter_context(attach_here(self.model, hook, self.layer,
                                                hook.tokens if hook.special is not None else None))
            out = self.model.hf.generate(input_ids=self.ids, attention_mask=torch.ones_like(self.ids), **kwargs)
        text = decode(self.model, out[0, start:])
        if text != shown[0]:
            self._put("token", column=index, text=text[len(shown[0]):] if text.startswith(shown[0]) else text,
                      replace=not text.startswith(shown[0]))
        return int(out.shape[1] - start)

    def _stops(self) -> set[int]:
        config = self.model.hf.generation_config
        eos = config.eos_token_id if config is not None else None
        stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        return stops | {int(self.kwargs["pad_token_id"])} if self.kwargs.get("pad_token_id") is not None else stops

    def _batched(self) -> None:
        """Greedy: every column in one batch (row i = column i), so all of them stream side by side."""
        from featurescope.steering.generate import decode

        start, rows = self.ids.shape[1], len(self.columns)
        stops = self._stops()

        def length(row: Tensor) -> int:
            new = row[start:].tolist()
            return next((k + 1 for k, t in enumerate(new) if t in stops), len(new))

        kwargs, shown = self._streaming(start, list(range(rows)), length)
        ids = self.ids.expand(rows, -1).contiguous()
        edit = RowHooks([c.hook for c in self.columns])
        with torch.inference_mode(), attach_here(self.model, edit, self.layer, edit.record):
            out = self.model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        for i in range(rows):
            n = length(out[i])
            text = decode(self.model, out[i, start:start + n])
            if text != shown[i]:
                self._put("token", column=i, text=text, replace=True)
            self._put("column", column=i, tokens=n)

    def _run(self) -> None:
        try:
            self.lock.acquire()
            try:
                if self.kwargs.get("do_sample"):
                    for i, column in enumerate(self.columns):
                        if self.cancelled.is_set():
                            break
                        self._put("column", column=i, tokens=self._column(i, column))
                else:
                    self._batched()
            finally:
                self.lock.release()
            self._put("done", cancelled=self.cancelled.is_set())
        except Exception as error:  # reported to the client, which has already had its 200
            self._put("error", detail=str(error) or type(error).__name__)
        finally:
            self.jobs.finished(self)


class Jobs:
    """The running generations, at most `limit` at once."""

    def __init__(self, limit: int = MAX_GENERATIONS) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._running: dict[str, Job] = {}

    def start(self, make: Callable[[Jobs], Job]) -> Job:
        """Create a job with `make(self)` and start it, or raise Busy when `limit` are running."""
        with self._lock:
            if len(self._running) >= self.limit:
                raise Busy(f"busy: {len(self._running)} generation(s) are running (at most {self.limit} at once); "
                           "try again when one finishes")
            job = make(self)
            self._running[job.id] = job
        job.thread.start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._running.get(job_id)

    def finished(self, job: Job) -> None:
        with self._lock:
            self._running.pop(job.id, None)

    def running(self) -> int:
        with self._lock:
            return len(self._running)
