"""Data-parallel training: every rank holds the whole SAE and trains on its slice of each global batch.

Rank r takes rows `torch.tensor_split(batch, world)[r]` of the global batch that one process would train on
(the data order depends only on seed, epoch and step, so any world size sees the same batches). The losses
are written as row shares of the global batch's loss (`DataParallel`), so the sum of the ranks' gradients,
all-reduced after the backward pass, is the single-process gradient; batch-wide quantities (AuxK's
normaliser, BatchTopK's k·batch selection and threshold, the resampling draw) are reduced over ranks.
Parameters, Adam state, dead-feature counters and the resampling RNG stay identical on every rank, so rank 0
alone writes the checkpoints and the SAE, in the single-process format.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from featurescope.activations import ActivationSource
from featurescope.distributed.world import World
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.parallel import Parallel
from featurescope.train import checkpoint
from featurescope.train.global_topk import global_top_k_flat
from featurescope.train.layout import Layout

T = TypeVar("T")


def split_sizes(n: int, parts: int) -> list[int]:
    """Row counts of `torch.tensor_split` of n rows into `parts` (the first n % parts get one more)."""
    base, extra = divmod(n, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


class DataParallel(Parallel):
    """The batch's rows split across ranks; every feature on every rank."""

    rows_split = True

    def __init__(self, world: World) -> None:
        self.world = world
        self.sizes: list[int] = [0] * world.size
        self.total = 0

    def set_batch(self, n: int) -> tuple[int, int]:
        """Start a global batch of `n` rows; returns this rank's (first, end) rows."""
        self.sizes = split_sizes(n, self.world.size)
        self.total = n
        first = sum(self.sizes[: self.world.rank])
        return first, first + self.sizes[self.world.rank]

    def rows(self, n: int) -> int:
        return self.total

    def row_mean(self, t: Tensor) -> Tensor:
        return t.sum() / self.total

    @torch.no_grad()
    def batch_variance(self, x: Tensor) -> Tensor:
        mean = self.world.all_sum(x.sum(0)) / self.total
        return self.world.all_sum((x - mean).pow(2).sum()) / self.total

    def rows_sum(self, t: Tensor) -> Tensor:
        return self.world.all_sum(t)

    def rows_gather(self, t: Tensor) -> Tensor:
        return self.world.gather_rows(t, self.sizes)

    def all_sum(self, t: Tensor) -> Tensor:
        return self.world.all_sum(t)

    def all_min(self, t: Tensor) -> Tensor:
        return self.world.all_min(t)

    def top_k_flat(self, scores: Tensor, K: int) -> Tensor:
        return global_top_k_flat(self.world, scores, K)


def allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks, in place (a missing gradient counts as zero)."""
    handles = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        handles.append(dist.all_reduce(p.grad, async_op=True))
    for h in handles:
        h.wait()


def broadcast_state(module: torch.nn.Module, names: set[str] | None = None) -> None:
    """Copy rank 0's parameters and buffers (those in `names`, default all) to every rank."""
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if names is None or name in names:
            dist.broadcast(t.data, 0)


class GroupLayout(Layout):
    """A layout over the process group of `world`: coordination goes through its collectives."""

    def __init__(self, world: World) -> None:
        super().__init__(world.device)
        self.world = world
        self.rank, self.size = world.rank, world.size

    def on_main(self, fn: Callable[[], T]) -> T | None:
        return self.world.on_main(fn)

    def agree(self, flag: bool) -> bool:
        return self.world.agree(flag)

    def barrier(self) -> None:
        self.world.barrier()

    def close(self) -> None:
        self.world.close()


class DataParallelLayout(GroupLayout):
    """DDP as an explicit gradient all-reduce over a whole SAE on every rank."""

    parallel: DataParallel

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.parallel = DataParallel(world)

    def create_sae(self, cfg: SAEConfig, seed: int) -> SAE:
        sae = SAE.create(cfg, seed=seed)
        sae.parallel = self.parallel
        return sae

    def sae_from_tensors(self, cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
        sae = SAE.from_tensors(cfg, tensors)
        sae.parallel = self.parallel
        return sae

    def sync_init(self, sae: SAE) -> None:
        broadcast_state(sae)

    def local_batch(self, batch: Tensor) -> Tensor:
        first, end = self.parallel.set_batch(batch.shape[0])
        return batch[first:end]

    def sync_grads(self, sae: SAE) -> None:
        allreduce_grads(list(sae.parameters()))

    def fired(self, fired: Tensor) -> Tensor:
        return self.world.all_max(fired.to(torch.uint8)).bool()

    def save_checkpoint(self, folder: Path, info: dict[str, Any], sae: SAE, optimizer: torch.optim.Optimizer,
                        trainer: dict[str, Tensor]) -> None:
        if self.is_main:
            checkpoint.save(folder, info, sae, optimizer, trainer)

    def evaluate(self, sae: SAE, source: ActivationSource, seed: int) -> dict[str, float]:
        metrics = super().evaluate(sae, source, seed) if self.is_main else None
        return self.world.broadcast_json(metrics)

    def save_sae(self, sae: SAE, out: Path, cfg: SAEConfig) -> None:
        sae.cpu()
        if self.is_main:
            sae.save(out)
