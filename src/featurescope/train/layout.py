"""Where a training run's rows and features live, and what that changes in the loop: one process here.

The loop (`featurescope.train.loop`) asks its `Layout` to build the SAE, cut each global batch, combine gradients, clip,
checkpoint, evaluate and save. This base class is the single-process run; the data-parallel and
feature-sharded layouts (`data_parallel`, `feature_shard`) override what differs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from featurescope.activations import ActivationSource
from featurescope.sae import SAE, SAEConfig
from featurescope.sae.parallel import LOCAL, Parallel
from featurescope.train import checkpoint
from featurescope.train.setup import evaluate_sample

T = TypeVar("T")


class Layout:
    """One process holds the whole batch and every feature."""

    rank = 0
    size = 1
    parallel: Parallel = LOCAL

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def is_main(self) -> bool:
        """This process writes the outputs."""
        return self.rank == 0

    # -- coordination ------------------------------------------------------------------------
    def on_main(self, fn: Callable[[], T]) -> T | None:
        """Run `fn` on the main process (its FeaturescopeError is raised everywhere)."""
        return fn()

    def agree(self, flag: bool) -> bool:
        """The main process's `flag`, on every process."""
        return flag

    def barrier(self) -> None:
        """Wait for every process."""

    def close(self) -> None:
        """Leave the process group, if this run joined one."""

    # -- the SAE -----------------------------------------------------------------------------
    def create_sae(self, cfg: SAEConfig, seed: int) -> SAE:
        """A fresh SAE (this process's part of it)."""
        return SAE.create(cfg, seed=seed)

    def sae_from_tensors(self, cfg: SAEConfig, tensors: dict[str, Tensor]) -> SAE:
        """The SAE (this process's part) from a checkpoint's `sae/` tensors as `load_checkpoint` returned them."""
        return SAE.from_tensors(cfg, tensors)

    def load_checkpoint(self, folder: Path, cfg: SAEConfig) -> checkpoint.Checkpoint | None:
        """The checkpoint in `folder` (this process's part of the per-feature tensors), or None."""
        return checkpoint.load(folder)

    def sync_init(self, sae: SAE) -> None:
        """Make the data-dependent initialisation identical on every process."""

    # -- a step ------------------------------------------------------------------------------
    def local_batch(self, batch: Tensor) -> Tensor:
        """This process's rows of the global batch."""
        return batch

    def sync_grads(self, sae: SAE) -> None:
        """Combine the gradients of the processes into the gradient of the global batch's loss."""

    def clip(self, sae: SAE, max_norm: float) -> None:
        """Clip the global gradient norm to `max_norm`."""
        torch.nn.utils.clip_grad_norm_(sae.parameters(), max_norm)

    def fired(self, fired: Tensor) -> Tensor:
        """Which of this process's features fired anywhere in the global batch."""
        return fired

    # -- outputs -----------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path, info: dict[str, Any], sae: SAE, optimizer: torch.optim.Optimizer,
                        trainer: dict[str, Tensor]) -> None:
        """Write one checkpoint of the whole run (from the main process)."""
        checkpoint.save(folder, info, sae, optimizer, trainer)

    def evaluate(self, sae: SAE, source: ActivationSource, seed: int) -> dict[str, float]:
        """FVU, L0 and MSE of the whole SAE on a sample of `source`."""
        return evaluate_sample(sae, source, seed=seed, device=self.device)

    def save_sae(self, sae: SAE, out: Path, cfg: SAEConfig) -> None:
        """Write the whole SAE to `out` (cfg.json + sae.safetensors); leaves `sae` on the CPU."""
        sae.cpu()
        sae.save(out)
