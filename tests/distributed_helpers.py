"""Rank processes for tests/*/test_distributed_*.py: a 2-rank gloo group on the CPU, started with torch.multiprocessing.

`run_ranks(jobs, world)` starts `world` processes that join one process group and run the jobs in order;
a job is a JSON-able dict with `kind`:

- `train`: `TrainConfig(**job["cfg"])`; with `interrupt_after`, the data raises KeyboardInterrupt after that
  many batches (every rank at the same step), like a run stopped right after a checkpoint; with `error_out`,
  a FeaturescopeError is not raised but its message written to that file (by rank 0).
- `row_top` / `flat_top`: the global selections of `featurescope.train.global_topk` on a fixed score matrix
  (`selection_scores`, many ties) whose columns (row_top; flat_top with `"split": "cols"`) or rows (flat_top)
  are split unevenly; rank 0 writes the chosen global flat indices, sorted, as JSON to `job["out"]`.
- `on_main_error`: rank 0's `World.on_main` raises an OSError; each rank records what it caught.
- `harvest`: `HarvestConfig(**job["cfg"])`; its model is loaded once per rank and reused by later harvest jobs.
  With `crash_after`, rank `crash_rank` (default 1) dies (exit 1) right after writing that many shard files,
  before the manifest records them: the other ranks are left waiting and `run_ranks` raises.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from featurescope.activations import NpySource

SCORES_SEED = 5


class Interrupting(NpySource):
    """A .npy's training split (what `train` reads from a path) whose batches raise KeyboardInterrupt after
    `after` batches in total."""

    def __init__(self, path: str, after: int) -> None:
        super().__init__(path, split="train")
        self.after, self.served = after, 0

    def batches(self, batch_size: int, **kw: Any) -> Iterator[torch.Tensor]:
        for b in super().batches(batch_size, **kw):
            if self.served >= self.after:
                raise KeyboardInterrupt
            self.served += 1
            yield b


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Compute like a rank does (bit-identical results need the same thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def selection_scores() -> torch.Tensor:
    """[40, 37] scores with many exact ties (small integers), the same in every process."""
    g = torch.Generator().manual_seed(SCORES_SEED)
    return torch.randint(-20, 20, (40, 37), generator=g).float()


def split(n: int, rank: int, world: int, first_share: float = 0.8) -> tuple[int, int]:
    """Uneven split: rank 0 gets `first_share` of n, the rest share the remainder."""
    head = int(n * first_share) if world > 1 else n
    if rank == 0:
        return 0, head
    rest = n - head
    per = -(-rest // (world - 1))
    lo = head + (rank - 1) * per
    return lo, min(n, lo + per)


def _selection(job: dict[str, Any], rank: int, world: int) -> None:
    from featurescope.distributed.world import join
    from featurescope.train.global_topk import global_row_top, global_top_k_flat

    w = join("cpu", "gloo")
    scores = selection_scores()
    if job["kind"] == "row_top":
        lo, hi = split(scores.shape[1], rank, world)
        top = global_row_top(w, scores[:, lo:hi], job["k"])
        rows = torch.arange(scores.shape[0]).repeat_interleave(job["k"])[top.keep.reshape(-1)]
        flat = rows * scores.shape[1] + (top.indices[top.keep] + lo)
    elif job.get("split") == "cols":
        lo, hi = split(scores.shape[1], rank, world)
        local = global_top_k_flat(w, scores[:, lo:hi], job["k"], columns=(lo, scores.shape[1]))
        flat = torch.div(local, hi - lo, rounding_mode="floor") * scores.shape[1] + lo + local % (hi - lo)
    else:
        lo, hi = split(scores.shape[0], rank, world)
        local = global_top_k_flat(w, scores[lo:hi], job["k"])
        flat = local + lo * scores.shape[1]
    chosen = w.gather_rows(flat)
    if rank == 0:
        with open(job["out"], "w") as f:
            json.dump(sorted(int(i) for i in chosen), f)


def _train(job: dict[str, Any], rank: int) -> None:
    from featurescope.errors import FeaturescopeError
    from featurescope.train import TrainConfig, train

    cfg = TrainConfig(**job["cfg"])
    try:
        if "interrupt_after" not in job:
            train(cfg, progress=False)
            return
        source = Interrupting(cfg.activations, job["interrupt_after"])
        with contextlib.suppress(KeyboardInterrupt):
            train(cfg, source=source, progress=False)
    except FeaturescopeError as e:
        if "error_out" not in job:
            raise
        if rank == 0:
            with open(job["error_out"], "w") as f:
                f.write(str(e))


_MODELS: dict[str, Any] = {}


def _harvest(job: dict[str, Any], rank: int) -> None:
    import featurescope.harvest as hv
    import featurescope.harvest.writer as hs
    from featurescope.models import load_model

    cfg = hv.HarvestConfig(**job["cfg"])
    if cfg.model not in _MODELS:
        _MODELS[cfg.model] = load_model(cfg.model, device="cpu")
    if "crash_after" in job and rank == job.get("crash_rank", 1):
        write, written = hs.write_safetensors, []

        def write_then_die(*args: Any, **kw: Any) -> None:
            write(*args, **kw)
            written.append(1)
            if len(written) >= job["crash_after"]:
                os._exit(1)

        hs.write_safetensors = write_then_die
    hv.harvest(cfg, model=_MODELS[cfg.model], progress=False)


def _on_main_error(job: dict[str, Any], rank: int) -> None:
    """Rank 0's `on_main` raises an OSError; every rank writes what it caught to `job["out"]`.RANK."""
    from featurescope.distributed.world import join

    def fail() -> None:
        raise OSError("No space left on device")

    w = join("cpu", "gloo")
    try:
        w.on_main(fail)
        caught = "nothing"
    except Exception as e:
        caught = f"{type(e).__name__}: {e}"
    with open(f"{job['out']}.{rank}", "w") as f:
        f.write(caught)
    w.barrier()  # the group still works: nobody is left waiting


def _worker(rank: int, world: int, port: int, jobs: list[dict[str, Any]]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    faulthandler.enable(all_threads=True)  # a crash in C++ code prints where each thread was
    dist.init_process_group("gloo")
    try:
        for job in jobs:
            if job["kind"] == "train":
                _train(job, rank)
            elif job["kind"] == "harvest":
                _harvest(job, rank)
            elif job["kind"] == "on_main_error":
                _on_main_error(job, rank)
            else:
                _selection(job, rank, world)
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


CRASH_SIGNALS = ("SIGABRT", "SIGSEGV")


def run_ranks(jobs: list[dict[str, Any]], world: int = 2, workdir: Path | None = None) -> None:
    """Run `jobs` on `world` ranks (gloo, one thread each); raises if a rank fails.

    With `workdir` (the folder that holds every input and output of the jobs), a rank killed by SIGABRT or
    SIGSEGV, a crash inside torch's C++ code (seen once on a loaded CI machine: "terminate called without an
    active exception"), is retried once in fresh processes on `workdir` as it was before the first try, and
    said so on stderr. A second crash, an exception or a non-zero exit fails at once.
    """
    before = None
    if workdir is not None:
        before = workdir.with_name(workdir.name + ".before")
        shutil.copytree(workdir, before)
    try:
        for attempt in (1, 2):
            try:
                mp.start_processes(_worker, args=(world, free_port(), jobs), nprocs=world, join=True,
                                   start_method="spawn")
                return
            except mp.ProcessExitedException as e:
                if before is None or attempt == 2 or e.signal_name not in CRASH_SIGNALS:
                    raise
                print(f"run_ranks: rank {e.error_index} crashed ({e.signal_name}); running the jobs again",
                      file=sys.stderr)
                shutil.rmtree(workdir)
                shutil.copytree(before, workdir)
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
