"""Reading and writing SAE folders safely: JSON and safetensors only, bad input as FeaturescopeError."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from featurescope.atomic import read_json
from featurescope.errors import FeaturescopeError
from featurescope.ownership import check_replaceable, open_permissions, refuse_foreign

DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
               torch.bfloat16: "bfloat16"}


def read_cfg(path: Path) -> dict[str, Any]:
    """cfg.json as a dict (anything else, or not JSON, is a FeaturescopeError)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise FeaturescopeError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, on the CPU (a missing, truncated or foreign file raises)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except FileNotFoundError:
        raise FeaturescopeError(f"{path}: no such file") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FeaturescopeError(f"{path}: not a readable safetensors file ({e})") from None


def expect_shapes(path: Path, tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise unless `tensors` holds every name of `shapes` with that shape and a floating dtype."""
    missing = sorted(set(shapes) - set(tensors))
    if missing:
        have = ", ".join(sorted(tensors)) or "none"
        raise FeaturescopeError(f"{path}: missing tensors {', '.join(missing)} (has {have})")
    for name, shape in shapes.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise FeaturescopeError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
        if not t.is_floating_point():
            raise FeaturescopeError(f"{path}: tensor {name} has dtype {t.dtype}, expected floating point")


def positive_int(path: Path, cfg: dict[str, Any], key: str) -> int:
    """`cfg[key]` as a positive int (a bool, float with a fraction, or missing value raises)."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value <= 0:
        raise FeaturescopeError(f"{path}: {key} must be a positive integer, got {value!r}")
    return int(value)


@contextmanager
def folder_writer(out: Path, *, overwrite: bool, is_ours: Callable[[Path], bool] | None = None,
                  what: str = "an SAE") -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out` by rename.

    An existing `out` that is not empty is an error unless `overwrite` and every entry of it passes
    `is_ours` (checked by content: nothing else is ever deleted); then it is moved aside first and
    deleted after the rename, so `out` is always either the old or the new complete folder (briefly
    absent in between). The current folder and those above it are never replaced.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeaturescopeError(f"{out}: exists and is not a folder")
    check_replaceable(out)
    out = Path(os.path.abspath(out))
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FeaturescopeError(f"{out}: folder exists and is not empty (pass overwrite=True to replace it)")
        refuse_foreign(out, is_ours or (lambda p: False), what)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    open_permissions(tmp)
    try:
        yield tmp
        old: Path | None = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        _fsync_dir(out.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
