"""SAE folders in any format we know: load ours, SAELens' or sparsify's (told apart by content), and export.

Formats are recognised by what cfg.json says, never by file names (sparsify's two files have the same
names as ours): ours carries `"format": "featurescope.sae"`; SAELens' has d_in and d_sae (weights W_enc,
... in sae_weights.safetensors); sparsify's has d_in and SparseCoderConfig fields but no d_sae (weights
encoder.weight, ... in sae.safetensors). Each loader then checks every tensor name and shape.
Everything is read as JSON and safetensors only (never pickle).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from featurescope.atomic import write_json, write_safetensors
from featurescope.errors import FeaturescopeError
from featurescope.sae.base import CFG_FILE, SAE, WEIGHTS_FILE
from featurescope.sae.config import FORMAT_NAME, SAEConfig
from featurescope.sae.files import folder_writer, read_cfg, read_tensors
from featurescope.sae.interop_saelens import is_saelens, load_saelens, saelens_files
from featurescope.sae.interop_sparsify import is_sparsify, load_sparsify, sparsify_files

Format = Literal["featurescope", "saelens", "sparsify"]
ExportFormat = Literal["saelens", "sparsify"]
EXPORT_FORMATS: tuple[str, ...] = ("saelens", "sparsify")
EXPECTED = (f'cfg.json with "format": "{FORMAT_NAME}", a SAELens cfg.json + sae_weights.safetensors, '
            "or a sparsify cfg.json + sae.safetensors")


def find_sae_folder(path: Path) -> Path:
    """The SAE folder `path` names: itself if it has cfg.json, else its one subfolder with a cfg.json
    (sparsify's trainer writes one per hookpoint, e.g. `layers.9/`); a file means its folder."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise FeaturescopeError(f"{path}: no such folder")
    if (path / CFG_FILE).is_file():
        return path
    subs = sorted(p for p in path.iterdir() if p.is_dir() and (p / CFG_FILE).is_file())
    if len(subs) == 1:
        return subs[0]
    if len(subs) > 1:
        raise FeaturescopeError(
            f"{path}: holds {len(subs)} SAE folders ({', '.join(p.name for p in subs)}); name one of them")
    raise FeaturescopeError(f"{path}: not an SAE folder (expected {EXPECTED})")


def detect_format(folder: Path) -> Format:
    """Which format the SAE folder `folder` is in, from the contents of cfg.json and the tensor names."""
    cfg = read_cfg(folder / CFG_FILE)
    return _detect(folder, cfg)


def _detect(folder: Path, cfg: dict[str, Any]) -> Format:
    fmt = cfg.get("format")
    if fmt == FORMAT_NAME:
        return "featurescope"
    if fmt is not None:
        raise FeaturescopeError(f"{folder}: unknown SAE format {fmt!r} in {CFG_FILE} (ours: {FORMAT_NAME!r})")
    if is_saelens(cfg):
        return "saelens"
    if is_sparsify(cfg):
        return "sparsify"
    raise FeaturescopeError(f"{folder}: not an SAE folder (expected {EXPECTED})")


def load_featurescope(folder: Path, cfg: dict[str, Any]) -> SAE:
    """Read our own folder (cfg.json + sae.safetensors)."""
    try:
        sae_cfg = SAEConfig.from_json(cfg)
    except FeaturescopeError as e:
        raise FeaturescopeError(f"{folder / CFG_FILE}: {e}") from None
    tensors = read_tensors(folder / WEIGHTS_FILE)
    try:
        return SAE.from_tensors(sae_cfg, tensors)
    except FeaturescopeError as e:
        raise FeaturescopeError(f"{folder / WEIGHTS_FILE}: {e}") from None


_LOADERS: dict[str, Callable[[Path, dict[str, Any]], SAE]] = {
    "featurescope": load_featurescope, "saelens": load_saelens, "sparsify": load_sparsify}


def load_any(path: Path, *, device: str | torch.device = "cpu") -> SAE:
    """Load the SAE in folder `path` (ours, SAELens' or sparsify's), on `device`, in eval mode.

    A folder holding exactly one SAE subfolder (a sparsify run) loads that one. Foreign SAEs come back
    as the equivalent featurescope SAE: same feature activations and reconstructions from raw inputs.
    """
    folder = find_sae_folder(Path(path))
    cfg = read_cfg(folder / CFG_FILE)
    sae = _LOADERS[_detect(folder, cfg)](folder, cfg)
    return sae.to(device).eval()


def export(sae: SAE, out: Path, fmt: ExportFormat, *, overwrite: bool = False) -> Path:
    """Write `sae` as a folder that the peer library's own loader reads, with input_scale folded in.

    saelens: `sae_lens.SAE.load_from_disk(out)`; sparsify: `sparsify.SparseCoder.load_from_disk(out)`.
    The folder is written beside `out` and renamed into place; an existing non-empty `out` is an
    error unless `overwrite`.
    """
    if fmt == "saelens":
        cfg, tensors = saelens_files(sae)
        weights = "sae_weights.safetensors"
    elif fmt == "sparsify":
        cfg, tensors = sparsify_files(sae)
        weights = "sae.safetensors"
    else:
        raise FeaturescopeError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    with folder_writer(Path(out), overwrite=overwrite, is_ours=_exported_file(Path(out)),
                       what="an exported SAE") as tmp:
        write_safetensors(tmp / weights, tensors)
        write_json(tmp / CFG_FILE, cfg)
    return Path(out)


_EXPORT_FILES = frozenset({CFG_FILE, "sae_weights.safetensors", WEIGHTS_FILE})


def _exported_file(out: Path) -> Callable[[Path], bool]:
    """Whether an entry of `out` belongs to an SAE folder `export` may replace: `out` must hold an SAE
    (its cfg.json read by content) and nothing but cfg.json and the weights files."""
    try:
        is_sae = out.is_dir() and bool(_detect(out, read_cfg(out / CFG_FILE)))
    except FeaturescopeError:
        is_sae = False
    return lambda p: is_sae and p.is_file() and p.name in _EXPORT_FILES
