"""Training checkpoints: everything needed to continue a run bit for bit, as safetensors + JSON.

Folder layout (`OUT/checkpoint/`):

- `state-NNNNNNNN.safetensors` — tensors at step N: `sae/<name>` (the SAE's state_dict),
  `sae_train/<name>` (training-only SAE state), `adam/<param>/{exp_avg,exp_avg_sq,step}`,
  `trainer/<name>` (dead-feature counters, the resampling RNG state).
- `checkpoint.json` — written last, atomically: format, version, step, the tensor file's name, the
  training configuration, the SAE configuration and counters (tokens, elapsed seconds).

A checkpoint is the tensor file that `checkpoint.json` names; a tensor file written by a run killed
before it updated the JSON is an orphan and is deleted by the next save, as are the temporary files of a
write that a kill cut short. A feature-sharded run writes the same two files (rank 0, from every rank's rows).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError, safe_open
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


def state_tensors(sae: SAE, optimizer: torch.optim.Optimizer, trainer: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every tensor of a checkpoint, by name (`sae/`, `sae_train/`, `adam/`, `trainer/`)."""
    names = {id(p): n for n, p in sae.named_parameters()}
    tensors: dict[str, Tensor] = {f"sae/{k}": v for k, v in sae.tensors().items()}
    tensors.update({f"sae_train/{k}": v for k, v in sae.training_state().items()})
    tensors.update(optimizer_tensors(optimizer, names))
    tensors.update({f"trainer/{k}": v for k, v in trainer.items()})
    return tensors


def per_feature_tensor(name: str, per_feature: Collection[str]) -> bool:
    """Whether checkpoint tensor `name` is indexed by feature along dim 0 (`per_feature`: such parameters)."""
    group, _, rest = name.partition("/")
    if group == "sae":
        return rest in per_feature
    if group == "adam":
        param, _, key = rest.rpartition("/")
        return param in per_feature and key in ("exp_avg", "exp_avg_sq")
    return name == "trainer/since_fired"


def tensor_file(step: int) -> str:
    """Name of the tensor file of the checkpoint at `step`."""
    return f"state-{step:08d}.safetensors"


def tensor_metadata(step: int) -> dict[str, str]:
    return {"format": FORMAT, "step": str(step)}


def commit(folder: Path, info: dict[str, Any]) -> None:
    """Point the manifest at the tensor file of step `info["step"]` (already written) and drop older files."""
    name = tensor_file(int(info["step"]))
    write_json(folder / MANIFEST, {"format": FORMAT, "version": VERSION, **info, "tensors": name})
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    for tmp in folder.glob(".*.tmp"):  # left by a process killed while writing (featurescope.atomic)
        tmp.unlink(missing_ok=True)


def save(folder: Path, info: dict[str, Any], sae: SAE, optimizer: torch.optim.Optimizer,
         trainer: dict[str, Tensor]) -> None:
    """Write the state at step `info["step"]` to `folder` (tensors first, then the manifest)."""
    folder.mkdir(parents=True, exist_ok=True)
    step = int(info["step"])
    write_safetensors(folder / tensor_file(step), state_tensors(sae, optimizer, trainer),
                      metadata=tensor_metadata(step))
    commit(folder, info)


def load(folder: Path, *, rows: tuple[int, int] | None = None, per_feature: Collection[str] = ()
         ) -> Checkpoint | None:
    """The checkpoint in `folder`, or None if there is none yet.

    With `rows` = (first, end), per-feature tensors (`per_feature_tensor`) are read as those rows only.
    """
    if not (folder / MANIFEST).is_file():
        return None
    info = read_json(folder / MANIFEST)
    if info.get("format") != FORMAT:
        raise FeaturescopeError(f"{folder / MANIFEST}: not a featurescope training checkpoint")
    if int(info.get("version", 0)) > VERSION:
        raise FeaturescopeError(f"{folder / MANIFEST}: checkpoint version {info.get('version')} is too new")
    path = folder / str(info.get("tensors", ""))
    try:
        tensors = load_file(str(path)) if rows is None else _load_rows(path, rows, per_feature)
    except (SafetensorError, OSError, ValueError) as e:
        raise FeaturescopeError(f"{path}: unreadable checkpoint ({e}); rerun with `overwrite`",
                                settings=("overwrite",)) from None
    return Checkpoint(info, tensors)


def _load_rows(path: Path, rows: tuple[int, int], per_feature: Collection[str]) -> dict[str, Tensor]:
    first, end = rows
    out: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
            if per_feature_tensor(name, per_feature):
                out[name] = f.get_slice(name)[first:end]
            else:
                out[name] = f.get_tensor(name)
    return out
