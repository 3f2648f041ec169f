"""The settings of a training run: `TrainConfig` (each field a `featurescope train` flag) and `Plan`, the same
with every default resolved against the data (`featurescope.train.loop.plan`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from featurescope.config_fields import option
from featurescope.sae import ARCHITECTURES

_MANY = "; several, comma-separated, train a family in one pass (docs/training.md)"


@dataclass
class TrainConfig:
    """Settings of one training run (each field is also a `featurescope train --flag`)."""

    activations: str = option("", "activation store folder or .npy file [N, d] (required)")
    layer: int | None = option(None, "the layer to train on, from a harvest of several layers (one-layer store: "
                               "its own)")
    out: str = option("", "output folder for the SAE, its checkpoints and training summary (required)")
    arch: str = option("topk", "SAE architecture", choices=ARCHITECTURES)
    features: int | None = option(None, "number of SAE features (default 8 × d_in)" + _MANY, many=True)
    k: int | None = option(None, "topk/batchtopk: active features per token (default 32, at most features/4)"
                           + _MANY, many=True)
    batch_size: int = option(4096, "activation rows per optimiser step")
    epochs: int = option(1, "passes over the activations")
    lr: float | None = option(None, "Adam learning rate (default: relu 3e-3; others 2.8e-3·√(16384/features), "
                                  "at most 8e-3)" + _MANY, many=True)
    sparsity_coefficient: float | None = option(None, "λ: relu's L1·‖W_dec‖ coefficient (default 5), "
                                                    "jumprelu's L0 coefficient (default 1)" + _MANY, many=True)
    warmup: float = option(0.05, "relu/jumprelu: fraction of training over which λ rises from 0")
    lr_decay: float = option(0.2, "final fraction of training over which the lr decays linearly to 0")
    auxk_coefficient: float = option(1 / 32, "topk/batchtopk: weight of the AuxK loss (0 = off)")
    k_aux: int | None = option(None, "topk/batchtopk: dead latents used by AuxK (default d_in / 2)")
    bandwidth: float = option(0.05, "jumprelu: bandwidth ε of the straight-through estimator")
    init_threshold: float = option(0.1, "jumprelu: initial threshold θ")
    threshold_lr_scale: float = option(10.0, "jumprelu: the thresholds' lr (of log θ) relative to --lr")
    resample: bool = option(True, "relu/jumprelu: resample dead features")
    dead_tokens: int | None = option(None, "a feature is dead after this many tokens without firing "
                                         "(default 10%% of the run's tokens, at most 10M)")
    select_dtype: str = option("bfloat16", "topk/batchtopk: dtype of the selection matmul",
                             choices=("bfloat16", "float32"))
    grad_clip: float = option(1.0, "clip the gradient norm to this (0 = off)")
    normalize: bool = option(True, "scale inputs by one constant so that E‖x‖ = √d_in")
    max_rows: int | None = option(None, "train on the first N rows only")
    seed: int = option(0, "seed of the initialisation and of the data order")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (cuda if available)")
    autocast: bool = option(False, "bfloat16 autocast (CUDA only)")
    checkpoint_every: int = option(1000, "checkpoint every N steps (0 = off)")
    checkpoint_seconds: float = option(300.0, "also checkpoint every N seconds (0 = off)")
    log_every: int = option(10, "update the progress bar every N steps")
    overwrite: bool = option(False, "discard an existing run in --out")
    distributed: int = option(0, "start N local ranks (torchrun --standalone); under torchrun the ranks are its own")
    shard_features: bool = option(False, "with several ranks: split the features across them instead of the batch")
    dist_backend: str = option("auto", "torch.distributed backend (auto: nccl on CUDA, else gloo)",
                             choices=("auto", "nccl", "gloo"))


VOLATILE = frozenset({"out", "device", "log_every", "checkpoint_every", "checkpoint_seconds", "overwrite",
                      "distributed", "shard_features", "dist_backend"})
"""Fields that do not change the result: a rerun may differ in them and still resume (on any world size)."""


class Plan(NamedTuple):
    """The settings of a run with every default resolved against the data."""

    features: int
    k: int | None
    lr: float
    sparsity_coefficient: float | None
    k_aux: int | None
    dead_tokens: int
    batches_per_epoch: int
    total_steps: int
