"""The image part of an activation store written by `featurescope harvest-images` (docs/formats/activation-store.md).

Besides the usual `shard-NNNNN.safetensors` (acts, tokens, mask), each shard has `images-NNNNN.safetensors`:
per position, which image it shows (-1 for text) and which patch (view, row, column), plus one JSON record per
context in its metadata; `thumbnails/CCCCCCCC.jpg` holds the part of each context's image that its patch grid
covers. Context c holds image c (one image per context).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from safetensors import SafetensorError, safe_open
from torch import Tensor

from featurescope.activations import ActivationStore
from featurescope.errors import FeaturescopeError

POSITIONS_FORMAT = "featurescope.image-positions"
MODALITY = "image+text"
THUMBNAILS = "thumbnails"


def images_name(index: int) -> str:
    """File name of the image positions of shard `index`."""
    return f"images-{index:05d}.safetensors"


def thumbnail_name(context: int) -> str:
    """File name (inside THUMBNAILS) of the thumbnail of context `context`'s image."""
    return f"{context:08d}.jpg"


class ImagePositions(NamedTuple):
    """What each position of one shard's contexts shows."""

    image: Tensor
    """[contexts, ctx_len] int32: the image (= its context id) whose patch the position holds, -1 for text."""
    view: Tensor
    """[contexts, ctx_len] int8: 0 for the finest patch grid, 1 for a coarser global view; -1 for text."""
    row: Tensor
    """[contexts, ctx_len] int16: patch row in its view's grid, -1 for text."""
    col: Tensor
    """[contexts, ctx_len] int16: patch column, -1 for text."""
    records: list[dict[str, Any]]
    """One record per context: context, ref, text, width, height, resized, canvas, grid, tokens, truncated."""


def is_multimodal(store: ActivationStore) -> bool:
    """True if the store was harvested from images (it has image positions)."""
    return store.manifest.get("modality") == MODALITY


def read_positions(store: ActivationStore, index: int) -> ImagePositions:
    """The image positions of shard `index` (validated against the shard)."""
    entry = store.shards[index]
    name = entry.get("images_file")
    if not name:
        raise FeaturescopeError(f"{store.path}: shard {entry['file']} has no image positions")
    f = store.path / name
    if not f.is_file():
        raise FeaturescopeError(f"{store.path}: {name} is missing")
    if f.stat().st_size != int(entry["images_bytes"]):
        raise FeaturescopeError(f"{f}: truncated or changed ({f.stat().st_size} bytes, manifest says "
                                f"{entry['images_bytes']})")
    try:
        with safe_open(str(f), framework="pt") as st:
            meta = st.metadata() or {}
            tensors = {k: st.get_tensor(k) for k in ("image", "view", "row", "col")}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise FeaturescopeError(f"{f}: corrupt image positions ({e})") from None
    if meta.get("format") != POSITIONS_FORMAT:
        raise FeaturescopeError(f"{f}: not an image-positions file")
    records = json.loads(meta.get("images", "[]"))
    shape = tuple(tensors["image"].shape)
    if any(tuple(t.shape) != shape for t in tensors.values()) or len(records) != shape[0]:
        raise FeaturescopeError(f"{f}: corrupt image positions (shapes do not match)")
    return ImagePositions(tensors["image"], tensors["view"], tensors["row"], tensors["col"], records)


def shard_refs(store_path: Path, entry: dict[str, Any]) -> list[str]:
    """The image refs a recorded shard holds (for resuming)."""
    try:
        with safe_open(str(store_path / entry["images_file"]), framework="pt") as st:
            return [r["ref"] for r in json.loads((st.metadata() or {}).get("images", "[]"))]
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise FeaturescopeError(f"{store_path}: unreadable {entry.get('images_file')} ({e}); rerun with `overwrite`",
                                settings=("overwrite",)) from None


def image_records(store: ActivationStore) -> list[dict[str, Any]]:
    """Every context's image record, in context order."""
    out: list[dict[str, Any]] = []
    for i in range(len(store.shards)):
        out += read_positions(store, i).records
    return out


def thumbnail(store: ActivationStore, context: int) -> bytes:
    """The JPEG thumbnail of context `context`'s image."""
    f = Path(store.path) / THUMBNAILS / thumbnail_name(context)
    try:
        return f.read_bytes()
    except OSError:
        raise FeaturescopeError(f"{f}: thumbnail missing") from None
