"""Defaults, validation and small helpers of the training loop (`loop`), kept apart so the loop stays short."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from featurescope.activations import ActivationSource
from featurescope.distributed.world import pick_device
from featurescope.errors import FeaturescopeError
from featurescope.sae import SAE, architecture_class

if TYPE_CHECKING:
    from featurescope.train.config import Plan, TrainConfig

SCALE_SAMPLE = 65536
"""Rows sampled to estimate the input scale."""
GEOMEDIAN_SAMPLE = 16384
"""Rows (of that sample) whose geometric median initialises b_dec (TopK)."""
EVAL_ROWS = 16384


def default_features(d_in: int) -> int:
    """8 × d_in features."""
    return 8 * d_in


def default_dead_tokens(total_tokens: int, batch_size: int) -> int:
    """Dead-feature window: 10% of the run's tokens, between one batch and 10M tokens."""
    return int(min(10_000_000, max(batch_size, total_tokens // 10)))


def arch_settings(cfg: TrainConfig, plan: Plan) -> dict[str, Any]:
    """The architecture's training settings (`SAE.training_settings`), kept in `SAEConfig.extra` for the loss
    and for provenance."""
    settings = {**dataclasses.asdict(cfg), **plan._asdict()}
    return {key: settings[name] for key, name in architecture_class(cfg.arch).training_settings.items()}


def check_config(cfg: TrainConfig, *, have_source: bool) -> None:
    """Reject settings that cannot work, with one-line messages."""
    if not cfg.out:
        raise FeaturescopeError("`out` is required (the folder to write the SAE to)", settings=("out",))
    if not cfg.activations and not have_source:
        raise FeaturescopeError("`activations` is required (an activation store folder or a .npy file)",
                                settings=("activations",))
    architecture_class(cfg.arch)  # an unknown name raises, listing the known ones
    checks = [
        (cfg.epochs >= 1, f"`epochs` must be at least 1, got {cfg.epochs}"),
        (cfg.batch_size >= 1, f"`batch_size` must be at least 1, got {cfg.batch_size}"),
        (cfg.features is None or cfg.features >= 1, f"`features` must be positive, got {cfg.features}"),
        (cfg.k is None or cfg.k >= 1, f"`k` must be positive, got {cfg.k}"),
        (cfg.lr is None or cfg.lr > 0, f"`lr` must be positive, got {cfg.lr}"),
        (cfg.sparsity_coefficient is None or cfg.sparsity_coefficient >= 0,
         "`sparsity_coefficient` must not be negative"),
        (0 <= cfg.warmup <= 1, "`warmup` must be a fraction in [0, 1]"),
        (0 <= cfg.lr_decay <= 1, "`lr_decay` must be a fraction in [0, 1]"),
        (cfg.auxk_coefficient >= 0, "`auxk_coefficient` must not be negative"),
        (cfg.k_aux is None or cfg.k_aux >= 1, "`k_aux` must be positive"),
        (cfg.bandwidth > 0, "`bandwidth` must be positive"),
        (cfg.init_threshold > 0, "`init_threshold` must be positive"),
        (cfg.threshold_lr_scale >= 0, "`threshold_lr_scale` must not be negative"),
        (cfg.dead_tokens is None or cfg.dead_tokens >= 1, "`dead_tokens` must be positive"),
        (cfg.select_dtype in ("bfloat16", "float32"), "`select_dtype` must be bfloat16 or float32"),
        (cfg.grad_clip >= 0, "`grad_clip` must not be negative"),
        (cfg.max_rows is None or cfg.max_rows >= 1, "`max_rows` must be positive"),
        (cfg.distributed >= 0, f"`distributed` must not be negative, got {cfg.distributed}"),
    ]
    for ok, message in checks:
        if not ok:
            raise FeaturescopeError(message, settings=(message.split("`")[1],))  # each names its setting first


def check_ranks(cfg: TrainConfig, features: int, ranks: int) -> None:
    """Reject a split of `features` features over `ranks` processes that cannot work."""
    if cfg.shard_features and features < ranks:
        raise FeaturescopeError(f"`shard_features` needs at least one feature per rank: {features} features "
                                f"on {ranks} ranks", settings=("shard_features",))
    if cfg.dist_backend == "nccl" and pick_device(cfg.device).type != "cuda":
        raise FeaturescopeError("`dist_backend` nccl needs CUDA GPUs; use gloo (or auto) on the CPU",
                                settings=("dist_backend",))


def param_groups(sae: SAE, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups, each with an `lr_scale` (`SAE.fast_params`, e.g. JumpReLU's thresholds, learn
    faster)."""
    named = dict(sae.named_parameters())
    fast = list(sae.fast_params)
    groups = [{"params": [p for n, p in named.items() if n not in fast], "lr_scale": 1.0}]
    if fast:
        groups.append({"params": [named[n] for n in fast], "lr_scale": cfg.threshold_lr_scale})
    return groups


def input_scale(sample: Tensor) -> float:
    """The constant s with E‖s·x‖ = √d_in over `sample`."""
    if not bool(torch.isfinite(sample).all()):
        raise FeaturescopeError("the activations contain NaN or infinite values")
    mean_norm = float(sample.norm(dim=1).mean())
    if mean_norm <= 0:
        raise FeaturescopeError("the activations are all zero")
    return math.sqrt(sample.shape[1]) / mean_norm


@torch.no_grad()
def evaluate_sample(sae: SAE, source: ActivationSource, *, seed: int,
                    device: torch.device) -> dict[str, float]:
    """FVU (around the mean, raw units), L0 and MSE of the inference path on a sample of `source`."""
    x = source.sample(min(source.n_rows, EVAL_ROWS), seed=seed).to(device)
    err = var = l0 = 0.0
    mean = x.mean(0)
    for s in range(0, x.shape[0], 4096):
        xb = x[s : s + 4096]
        f = sae.encode(xb)
        x_hat = sae.decode(f)
        err += float((x_hat - xb).double().pow(2).sum())
        var += float((xb - mean).double().pow(2).sum())
        l0 += float((f != 0).sum())
    n = x.shape[0]
    return {"fvu": err / var if var > 0 else float("nan"), "l0": l0 / n, "mse": err / n}


class HeadSource(ActivationSource):
    """The first `rows` rows of another source."""

    def __init__(self, inner: ActivationSource, rows: int) -> None:
        self.inner = inner
        self.n_rows = min(rows, inner.n_rows)
        self.d_model = inner.d_model
        self.model, self.layer = inner.model, inner.layer
        self.buffer_rows = inner.buffer_rows
        sizes, left = [], self.n_rows
        for n in inner.chunk_rows():
            if left <= 0:
                break
            sizes.append(min(n, left))
            left -= n
        self._sizes = sizes

    def chunk_rows(self) -> list[int]:
        return list(self._sizes)

    def load_chunk(self, index: int) -> Tensor:
        return self.inner.load_chunk(index)[: self._sizes[index]]
