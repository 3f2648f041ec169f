"""Training checkpoints: everything needed to continue a run bit for bit, as safetensors + JSON.

Folder layout (`OUT/checkpoint/`):

- `state-NNNNNNNN.safetensors` — tensors at step N: `sae/<name>` (the SAE's state_dict),
  `sae_train/<name>` (training-only SAE state), `adam/<param>/{exp_avg,exp_avg_sq,step}`,
  `trainer/<name>` (dead-feature counters, the resampling RNG state).
- `checkpoint.json` — written last, atomically: format, version, step, the tensor file's name, the
  training configuration, the SAE configuration and counters (tokens, elapsed seconds).

A checkpoint is the tensor file that `checkpoint.json` names; a tensor file written by a run killed
before it updated the JSON is an orphan and is deleted by the next save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from featurescope.atomic import read_json, write_json, write_safetensors
from featurescope.errors import FeaturescopeError
from featurescope.sae.base import SAE

FORMAT = "featurescope.train-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"


class Checkpoint(NamedTuple):
    """A loaded checkpoint: its manifest and its tensors."""

    info: dict[str, Any]
    tensors: dict[str, Tensor]

    @property
    def step(self) -> int:
        return int(self.info["step"])

    def group(self, prefix: str) -> dict[str, Tensor]:
        """Tensors under `prefix/`, with the prefix removed."""
        p = prefix + "/"
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Tensor]:
    """Adam's per-parameter state as `adam/<param>/<key>` tensors (`names`: id(param) -> name)."""
    out: dict[str, Tensor] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, Tensor):
                    out[f"adam/{names[id(p)]}/{key}"] = value.detach()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str],
                           tensors: dict[str, Tensor]) -> None:
    """Inverse of `optimizer_tensors`."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            prefix = f"{names[id(p)]}/"
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                continue
            optimizer.state[p] = {k: (v if k == "step" else v.to(p.device)) for k, v in state.items()}


def save(folder: Path, info: dict[str, Any], sae: SAE, optimizer: torch.optim.Optimizer,
         trainer: dict[str, Tensor]) -> None:
    """Write the state at step `info["step"]` to `folder` (tensors first, then the manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    step = int(info["step"])
    names = {id(p): n for n, p in sae.named_parameters()}
    tensors: dict[str, Tensor] = {f"sae/{k}": v for k, v in sae.tensors().items()}
    tensors.update({f"sae_train/{k}": v for k, v in sae.training_state().items()})
    tensors.update(optimizer_tensors(optimizer, names))
    tensors.update({f"trainer/{k}": v for k, v in trainer.items()})
    name = f"state-{step:08d}.safetensors"
    write_safetensors(folder / name, tensors, metadata={"format": FORMAT, "step": str(step)})
    write_json(folder / MANIFEST, {"format": FORMAT, "version": VERSION, **info, "tensors": name})
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load(folder: Path) -> Checkpoint | None:
    """The checkpoint in `folder`, or None if there is none yet."""
    if not (folder / MANIFEST).is_file():
        return None
    info = read_json(folder / MANIFEST)
    if info.get("format") != FORMAT:
        raise FeaturescopeError(f"{folder / MANIFEST}: not a featurescope training checkpoint")
    if int(info.get("version", 0)) > VERSION:
        raise FeaturescopeError(f"{folder / MANIFEST}: checkpoint version {info.get('version')} is too new")
    path = folder / str(info.get("tensors", ""))
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise FeaturescopeError(f"{path}: unreadable checkpoint ({e}); rerun with --overwrite") from None
    return Checkpoint(info, tensors)
