"""The process group of a distributed run (torchrun's environment variables) and the collectives it uses.

Every collective here is a tensor collective: small metadata travels as JSON-encoded bytes in uint8 tensors,
never through torch.distributed's object collectives (which pickle). With the NCCL backend, metadata goes
through a second, gloo group on the CPU.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from featurescope.errors import FeaturescopeError

T = TypeVar("T")
ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun (or any launcher) sets for each rank; LOCAL_RANK and LOCAL_WORLD_SIZE are optional."""
TIMEOUT_ENV = "FEATURESCOPE_DIST_TIMEOUT"
"""Seconds a collective may wait for the other ranks (default 1800)."""


def launched() -> bool:
    """True inside a process group: one initialised already, or torchrun's variables with WORLD_SIZE > 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return all(v in os.environ for v in ENV_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def requested_size() -> int:
    """Number of ranks of the group that `join` joins (the initialised one, else torchrun's WORLD_SIZE)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def pick_device(name: str) -> torch.device:
    """`auto` → cuda if available, else cpu; an unavailable cuda is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise FeaturescopeError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FeaturescopeError("`device` cuda asked for, but no CUDA GPU is available", settings=("device",))
    return device


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of a rank: cuda:LOCAL_RANK when `name` is auto or cuda and a GPU is there, else `name`."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return pick_device(name)


@dataclass
class World:
    """This process's place in the group, its device and the collectives (all without autograd)."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool
    """This process initialised the group (`close` then destroys it)."""
    cpu_group: Any = None
    """Group for CPU tensors (metadata): None = the default group (gloo)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- reductions ---------------------------------------------------------------------------
    def _reduce(self, t: Tensor, op: Any) -> Tensor:
        out = t.detach().clone()
        dist.all_reduce(out, op=op)
        return out

    def all_sum(self, t: Tensor) -> Tensor:
        """Sum of `t` over ranks (a new tensor)."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def all_min(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def all_max(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        """`t` of every rank (same shape everywhere), in rank order."""
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t.detach().contiguous())
        return out

    def sizes(self, n: int) -> list[int]:
        """Every rank's `n`, in rank order."""
        return [int(v) for v in self.all_gather(torch.tensor([n], device=self.device))]

    def offset(self, n: int) -> int:
        """Sum of `n` over the ranks before this one."""
        return sum(self.sizes(n)[: self.rank])

    def gather_rows(self, t: Tensor, sizes: list[int] | None = None) -> Tensor:
        """Every rank's rows of `t` [n_r, ...] concatenated in rank order (`sizes`: the n_r, if known)."""
        sizes = sizes if sizes is not None else self.sizes(t.shape[0])
        pad = max(sizes)
        buf = t.new_zeros((pad, *t.shape[1:]))
        buf[: t.shape[0]] = t.detach()
        return torch.cat([part[:n] for part, n in zip(self.all_gather(buf), sizes, strict=True)])

    def broadcast_(self, t: Tensor, src: int = 0) -> Tensor:
        """Overwrite `t` with rank `src`'s, in place."""
        dist.broadcast(t.data, src)
        return t

    def barrier(self) -> None:
        self.all_sum(torch.zeros(1, device=self.device))

    # -- metadata -------------------------------------------------------------------------------
    def _bytes(self, data: bytes, n: int) -> Tensor:
        buf = torch.zeros(n, dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return buf

    def gather_json(self, obj: Any) -> list[Any]:
        """`obj` (JSON-serialisable) of every rank, in rank order."""
        data = json.dumps(obj).encode()
        length = torch.tensor([len(data)], dtype=torch.int64)
        lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(self.size)]
        dist.all_gather(lengths, length, group=self.cpu_group)
        n = max(int(v) for v in lengths)
        parts = [torch.zeros(n, dtype=torch.uint8) for _ in range(self.size)]
        dist.all_gather(parts, self._bytes(data, n), group=self.cpu_group)
        return [json.loads(bytes(p[: int(m)].tolist()).decode()) for p, m in zip(parts, lengths, strict=True)]

    def broadcast_json(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj`."""
        return self.gather_json(obj if self.rank == src else None)[src]

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (e.g. a decision that depends on rank 0's clock)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.broadcast(t, 0, group=self.cpu_group)
        return bool(t.item())

    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on rank 0 only; an error there is raised on every rank (the others as a FeaturescopeError),
        so that no rank waits for a collective that rank 0 will never join."""
        error: list[Any] | None = None  # [message, the settings it names]
        result = None
        failure: Exception | None = None
        if self.is_main:
            try:
                result = fn()
            except FeaturescopeError as e:
                error = [str(e), list(e.settings)]
            except Exception as e:  # re-raised below, after the other ranks are told
                failure, error = e, [f"rank 0 failed: {type(e).__name__}: {e}", []]
        error = self.broadcast_json(error)
        if failure is not None:
            raise failure
        if error is not None:
            raise FeaturescopeError(str(error[0]), settings=tuple(error[1]))
        return result

    def close(self) -> None:
        """Leave the group if this process created it."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def join(device: str = "auto", backend: str = "auto") -> World:
    """Join the process group that torchrun's variables describe, or use the one already initialised.

    `backend` auto is nccl on CUDA, else gloo. Each rank's device is `rank_device(device, LOCAL_RANK)`.
    """
    if not dist.is_available():
        raise FeaturescopeError("this build of torch has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = rank_device(device, local_rank)
    owns = not dist.is_initialized()
    if owns:
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group(backend=backend, timeout=timeout)
    backend = str(dist.get_backend())
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local_rank, device=dev,
                 backend=backend, owns_group=owns, cpu_group=cpu_group)
