"""Feature sharding for very wide SAEs: rank r holds features [first_r, end_r) of W_enc_rows, b_enc, W_dec
(and JumpReLU's thresholds, their Adam moments and dead-feature counters); b_dec and the input scale are
replicated, and every rank sees the whole batch.

A step: the input enters each rank's features (`feature_input`: identity forward, gradient all-reduced
backward, so b_dec gets the sum over shards); each rank encodes with its features, the TopK selection is
global (local top-k candidates all-gathered, top-k of those, each rank keeps its own); each rank decodes
its active features into a partial reconstruction that is all-reduced (`features_sum`: all-reduce forward,
identity backward, since the loss after it is computed identically on every rank). AuxK, L1/L0 penalties,
resampling and gradient clipping reduce over shards the same way. Checkpoints and the final SAE are one
ordinary file each (`shard_io.write_gathered`), so any world size — or one process — resumes them.
Supported: every architecture (relu, topk, batchtopk, jumprelu).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from featurescope.activations import ActivationSource
from featurescope.atomic import write_json
from featurescope.distributed.world import World
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, SAEConfig, TopKSAE, architecture_class
from featurescope.sae.base import CFG_FILE, WEIGHTS_FILE
from featurescope.sae.parallel import Parallel, RowTop
from featurescope.train import checkpoint
from featurescope.train.data_parallel import GroupLayout, broadcast_state, split_sizes
from featurescope.train.gathered_file import write_gathered
from featurescope.train.global_topk import global_row_top, global_top_k_flat
from featurescope.train.setup import EVAL_ROWS

T = TypeVar("T")


class _ToShards(torch.autograd.Function):
    """Identity forward; the gradient is summed over ranks (every shard's features read the input)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, world: World) -> Tensor:
        ctx.world = world
        return t.view_as(t)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]  # torch: (ctx, *grads)
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g, None


class _FromShards(torch.autograd.Function):
    """Sum of the ranks' partial results forward; the gradient passes through (the loss is replicated)."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, world: World) -> Tensor:
        out = t.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]  # torch: (ctx, *grads)
        return g, None


class FeatureParallel(Parallel):
    """Features [first, end) of `total` here; every row of the batch on every rank."""

    features_split = True

    def __init__(self, world: World, first: int, end: int, total: int) -> None:
        self.world, self.first, self.end, self.total = world, first, end, total

    def feature_range(self, d_sae: int) -> tuple[int, int, int]:
        return self.first, self.end, self.total

    def feature_input(self, t: Tensor) -> Tensor:
        return _ToShards.apply(t, self.world)

    def features_sum(self, t: Tensor) -> Tensor:
        return _FromShards.apply(t, self.world)

    def features_total(self, t: Tensor) -> Tensor:
        return self.world.all_sum(t)

    def features_mean(self, t: Tensor) -> Tensor:
        parts = torch.stack([t.detach().float().sum(), torch.tensor(float(t.numel()), device=t.device)])
        total, count = self.world.all_sum(parts)
        return total / count

    def features_offset(self, n: int) -> int:
        return self.world.offset(n)

    def all_sum(self, t: Tensor) -> Tensor:
        return self.world.all_sum(t)

    def all_min(self, t: Tensor) -> Tensor:
        return self.world.all_min(t)

    def row_top(self, scores: Tensor, k: int) -> RowTop:
        return global_row_top(self.world, scores, k)

    def top_k_flat(self, scores: Tensor, K: int) -> Tensor:
        return global_top_k_flat(self.world, scores, K, columns=(self.first, self.total))


def per_feature_names(cfg: SAEConfig) -> list[str]:
    """The parameters of `cfg.architecture` indexed by feature along dim 0."""
    small = dataclasses.replace(cfg, d_sae=max(1, cfg.k or 1))
    return architecture_class(cfg.architecture)(small).per_feature_params()


def clip_sharded(sae: SAE, max_norm: float, world: World) -> None:
    """`clip_grad_norm_` over the whole SAE: sharded parameters' squares summed over ranks, the rest once."""
    sharded = set(sae.per_feature_params())
    parts = torch.zeros(2, device=sae.W_dec.device)
    for name, p in sae.named_parameters():
        if p.grad is not None:
            parts[0 if name in sharded else 1] += p.grad.detach().float().pow(2).sum()
    parts[0] = world.all_sum(parts[0])
    total = parts.sum().sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in sae.parameters():
        if p.grad is not None:
            p.grad.mul_(coef.to(p.grad.dtype))


@torch.no_grad()
def sharded_evaluate(sae: SAE, source: ActivationSource, seed: int, device: torch.device) -> dict[str, float]:
    """`evaluate_sample` of the whole SAE, each rank encoding and decoding with its features."""
    par = sae.parallel
    x = source.sample(min(source.n_rows, EVAL_ROWS), seed=seed).to(device)
    err = var = l0 = 0.0
    mean = x.mean(0)
    for s in range(0, x.shape[0], 4096):
        xb = x[s : s + 4096]
        partial, count = sae.decode_partial(sae.pre_acts(sae.normalize(xb.to(sae.W_dec.dtype))))
        x_hat = sae.denormalize(par.features_sum(partial) + sae.b_dec)
        err += float((x_hat - xb).double().pow(2).sum())
        var += float((xb - mean).double().pow(2).sum())
        l0 += float(par.features_total(count))
    n = x.shape[0]
    return {"fvu": err / var if var > 0 else float("nan"), "l0": l0 / n, "mse": err / n}


class FeatureShardLayout(GroupLayout):
    """Each rank trains its slice of the features on the whole batch."""

    def __init__(self, world: World, d_sae: int) -> None:
        if d_sae < world.size:
            raise FeaturescopeError(f"`shard_features` needs at least one feature per rank: {d_sae} features "
                                    f"on {world.size} ranks", settings=("shard_features",))
        super().__init__(world)
        self.sizes = split_sizes(d_sae, world.size)
        first = sum(self.sizes[: world.rank])
        self.rows = (first, first + self.sizes[world.rank])
        self.parallel = FeatureParallel(world, first, self.rows[1], d_sae)

    # -- the SAE -----------------------------------------------------------------------------
    def _local(self, cfg: SAEConfig) -> SAEConfig:
        n = self.sizes[self.rank]
        return dataclasses.replace(cfg, d_sae=n, k=None if cfg.k is None else min(cfg.k, n))

    def _attach(self, sae: SAE, cfg: SAEConfig) -> SAE:
        sae.parallel = self.parallel
        if cfg.k is not None and isinstance(sae, TopKSAE):
            sae.k = cfg.k  # the global k: a shard may hold fewer features than k
        return sae

    def create_sae(self, cfg: SAEConfig, seed: int) -> SAE:
        sae = self._attach(architecture_class(cfg.architecture)(self._local(cfg)), cfg)
        sae.reset_parameters(torch.Generator().manual_seed(seed))  # this shard's rows of the whole init
        return sae

    def sae_from_tensors(self, cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
        return self._attach(SAE.from_tensors(self._local(cfg), tensors), cfg)

    def load_checkpoint(self, folder: Path, cfg: SAEConfig) -> checkpoint.Checkpoint | None:
        return checkpoint.load(folder, rows=self.rows, per_feature=per_feature_names(cfg))

    def sync_init(self, sae: SAE) -> None:
        sharded = set(sae.per_feature_params())
        names = {n for n, _ in [*sae.named_parameters(), *sae.named_buffers()]} - sharded
        broadcast_state(sae, names)

    # -- a step ------------------------------------------------------------------------------
    def clip(self, sae: SAE, max_norm: float) -> None:
        clip_sharded(sae, max_norm, self.world)

    # -- outputs -----------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path, info: dict[str, Any], sae: SAE, optimizer: torch.optim.Optimizer,
                        trainer: dict[str, Tensor]) -> None:
        step = int(info["step"])
        tensors = checkpoint.state_tensors(sae, optimizer, trainer)
        names = sae.per_feature_params()
        sharded = [n for n in tensors if checkpoint.per_feature_tensor(n, names)]
        if self.is_main:
            folder.mkdir(parents=True, exist_ok=True)
        self.barrier()
        write_gathered(self.world, folder / checkpoint.tensor_file(step), tensors, sharded, self.sizes,
                       checkpoint.tensor_metadata(step))
        if self.is_main:
            checkpoint.commit(folder, info)

    def evaluate(self, sae: SAE, source: ActivationSource, seed: int) -> dict[str, float]:
        return sharded_evaluate(sae, source, seed, self.device)

    def save_sae(self, sae: SAE, out: Path, cfg: SAEConfig) -> None:
        tensors = sae.tensors()
        sharded = [n for n in tensors if n in sae.per_feature_params()]
        write_gathered(self.world, out / WEIGHTS_FILE, tensors, sharded, self.sizes, {"format": "featurescope.sae"})
        if self.is_main:
            write_json(out / CFG_FILE, cfg.to_json())
        sae.cpu()
