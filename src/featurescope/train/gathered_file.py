"""One ordinary safetensors file from a feature-sharded run: rank 0 writes it as the ranks' rows arrive.

Tensors indexed by feature along dim 0 are the concatenation of every rank's rows, in rank order; the
others are rank 0's (they are the same on every rank). Rank 0 holds one rank's slice of one tensor at a
time, never the whole SAE, so the file can be larger than any one process's memory. The file goes through
`featurescope.atomic.atomic_path` (temporary name, fsync, rename), like every other write.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Collection
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from featurescope.atomic import atomic_path
from featurescope.distributed.world import World

DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
"""safetensors' names of the dtypes."""


def _raw(t: Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


def _wire(world: World, t: Tensor) -> torch.device:
    """Where point-to-point transfers of `t` happen: its own device with NCCL; gloo sends CPU tensors only."""
    return t.device if world.backend == "nccl" else torch.device("cpu")


def _header(tensors: dict[str, Tensor], sharded: Collection[str], rows: int, metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name, t in tensors.items():
        shape = list(t.shape)
        if name in sharded:
            shape[0] = rows
        size = math.prod(shape) * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    data = json.dumps(header, separators=(",", ":")).encode()
    return data + b" " * (-len(data) % 8)


def write_gathered(world: World, path: Path, tensors: dict[str, Tensor], sharded: Collection[str],
                   sizes: list[int], metadata: dict[str, str]) -> None:
    """Write the whole tensors to `path` (rank r holds `sizes[r]` rows of those in `sharded`); all ranks call.

    `tensors` must list the same names, in the same order, on every rank.
    """
    if world.is_main:
        head = _header(tensors, sharded, sum(sizes), metadata)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for name, t in tensors.items():
                f.write(_raw(t))
                if name not in sharded:
                    continue
                for r in range(1, world.size):
                    if sizes[r]:
                        buf = torch.empty((sizes[r], *t.shape[1:]), dtype=t.dtype, device=_wire(world, t))
                        dist.recv(buf, src=r)
                        f.write(_raw(buf))
    else:
        for name, t in tensors.items():
            if name in sharded and sizes[world.rank]:
                dist.send(t.detach().contiguous().to(_wire(world, t)), dst=0)
    world.barrier()
