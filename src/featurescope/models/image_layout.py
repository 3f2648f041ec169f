"""Where an image's patches sit in a VLM's token sequence, and which part of the picture its patch grid covers.

Each supported family turns one image into runs of image-placeholder tokens whose embeddings are replaced by
the vision tower's patch embeddings:

- LLaVA, Gemma 3: one run of n² tokens per image, row-major over an n × n grid (LLaVA: the CLIP patches;
  Gemma 3: the 4 × 4-pooled SigLIP patches, 16 × 16 for 256 tokens).
- Idefics3 / SmolVLM: with image splitting, one run of m² tokens per tile (preceded by `<row_i_col_j>`), tiles
  row-major, then one run for the downscaled whole image (preceded by `<global-img>`); without, only the latter.
  The tiles are stitched into one grid of (rows·m) × (cols·m) patches, view 0; the global run is view 1.
- Qwen2-VL / Qwen2.5-VL: one run per image of (h/2)·(w/2) tokens, row-major over the merged patch grid given by
  `image_grid_thw`.

View 0 of every image is its finest grid, covering `canvas` (a box in the image's own pixel coordinates:
the whole image, LLaVA's centre crop, or its padded square).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError

SQUARE_RUNS = ("llava", "gemma3", "paligemma")
TILED = ("idefics3", "smolvlm")
QWEN = ("qwen2_vl", "qwen2_5_vl")
FAMILIES = SQUARE_RUNS + TILED + QWEN


class ImagePatches(NamedTuple):
    """One image's tokens: their positions in the sequence and the patch each one shows."""

    positions: Tensor
    """[n] int64 positions in the input ids."""
    view: Tensor
    """[n] int64: 0 for the finest grid, 1 for a coarser global view (Idefics3 tiles + global image)."""
    row: Tensor
    """[n] int64 row in its view's grid."""
    col: Tensor
    """[n] int64 column in its view's grid."""
    grid: tuple[int, int]
    """(rows, cols) of view 0."""


def runs(ids: Tensor, token: int) -> list[tuple[int, int]]:
    """(start, length) of each run of consecutive `token`s in the 1-D `ids`."""
    hit = (ids == token).to(torch.int8)
    if not bool(hit.any()):
        return []
    edges = torch.diff(torch.cat([torch.zeros(1, dtype=torch.int8), hit, torch.zeros(1, dtype=torch.int8)]))
    starts = (edges == 1).nonzero().squeeze(1).tolist()
    ends = (edges == -1).nonzero().squeeze(1).tolist()
    return [(s, e - s) for s, e in zip(starts, ends, strict=True)]


def _square(start: int, n: int, what: str) -> ImagePatches:
    side = math.isqrt(n)
    if side * side != n:
        raise FeaturescopeError(f"{what}: a run of {n} image tokens is not a square grid")
    k = torch.arange(n)
    return ImagePatches(start + k, torch.zeros(n, dtype=torch.long), k // side, k % side, (side, side))


def _grid(start: int, rows: int, cols: int) -> ImagePatches:
    k = torch.arange(rows * cols)
    return ImagePatches(start + k, torch.zeros(rows * cols, dtype=torch.long), k // cols, k % cols, (rows, cols))


def _tiled(ids: Tensor, token: int, tokenizer: Any) -> list[ImagePatches]:
    """Idefics3 / SmolVLM: tile runs after `<row_i_col_j>`, then the global run after `<global-img>`."""
    global_id = tokenizer.convert_tokens_to_ids("<global-img>")
    out: list[ImagePatches] = []
    tiles: list[tuple[int, int, int, int]] = []  # (start, length, tile row, tile col)
    for start, n in runs(ids, token):
        marker = int(ids[start - 1]) if start > 0 else -1
        if marker == global_id:
            glob = _square(start, n, "idefics3")
            if not tiles:
                out.append(glob)
                continue
            m = math.isqrt(tiles[0][1])
            n_rows, n_cols = max(t[2] for t in tiles) + 1, max(t[3] for t in tiles) + 1
            parts = [_square(s, length, "idefics3") for s, length, _, _ in tiles]
            pos = torch.cat([p.positions for p in parts] + [glob.positions])
            row = torch.cat([p.row + tr * m for p, (_, _, tr, _) in zip(parts, tiles, strict=True)] + [glob.row])
            col = torch.cat([p.col + tc * m for p, (_, _, _, tc) in zip(parts, tiles, strict=True)] + [glob.col])
            view = torch.cat([torch.zeros(len(pos) - n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
            out.append(ImagePatches(pos, view, row, col, (n_rows * m, n_cols * m)))
            tiles = []
            continue
        name = tokenizer.convert_ids_to_tokens(marker) if marker >= 0 else ""
        if not (isinstance(name, str) and name.startswith("<row_") and "_col_" in name):
            raise FeaturescopeError(f"idefics3: a run of image tokens at position {start} follows {name!r}, not a "
                                    "tile or global-image marker")
        r, c = name[len("<row_"):-1].split("_col_")
        tiles.append((start, n, int(r) - 1, int(c) - 1))
    if tiles:
        raise FeaturescopeError("idefics3: image tiles without their global image (the sequence was cut short?)")
    return out


def locate(family: str, ids: Tensor, image_token: int, *, tokenizer: Any = None,
           image_grid_thw: Tensor | None = None, merge_size: int = 2) -> list[ImagePatches]:
    """The patches of every image in the 1-D token ids `ids`, in order of appearance."""
    if family in TILED:
        return _tiled(ids, image_token, tokenizer)
    found = runs(ids, image_token)
    if family in QWEN:
        if image_grid_thw is None or len(image_grid_thw) != len(found):
            raise FeaturescopeError(f"{family}: {len(found)} image runs but "
                                    f"{0 if image_grid_thw is None else len(image_grid_thw)} image grids")
        out = []
        for (start, n), (t, h, w) in zip(found, image_grid_thw.tolist(), strict=True):
            rows, cols = h // merge_size, w // merge_size
            if t * rows * cols != n:
                raise FeaturescopeError(f"{family}: a run of {n} image tokens does not match its grid {t}×{h}×{w}")
            out.append(_grid(start, rows, cols))
        return out
    return [_square(start, n, family) for start, n in found]


def _size(d: Any, *keys: str) -> Any:
    if d is None:
        return None
    for k in keys:
        v = d.get(k) if isinstance(d, dict) else getattr(d, k, None)
        if v:
            return v
    return None


def canvas(family: str, image_processor: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The box (left, top, right, bottom) of an image of `size` (w, h) that view 0's grid covers.

    CLIP-style processors (LLaVA) may pad to a square, resize the shortest edge and centre-crop; the others
    resize (or tile) the whole image.
    """
    w, h = size
    if family != "llava":
        return (0.0, 0.0, float(w), float(h))
    left, top, bw, bh = 0.0, 0.0, float(w), float(h)
    if getattr(image_processor, "do_pad", False):
        side = max(bw, bh)
        left, top, bw, bh = (w - side) / 2, (h - side) / 2, side, side
    sx = sy = 1.0
    if getattr(image_processor, "do_resize", True):
        size_cfg = getattr(image_processor, "size", None)
        shortest = _size(size_cfg, "shortest_edge")
        if shortest:
            sx = sy = shortest / min(bw, bh)
        elif _size(size_cfg, "height") and _size(size_cfg, "width"):
            sx, sy = _size(size_cfg, "width") / bw, _size(size_cfg, "height") / bh
    if getattr(image_processor, "do_center_crop", False):
        crop = getattr(image_processor, "crop_size", None)
        cw, ch = _size(crop, "width"), _size(crop, "height")
        if cw and ch:
            rw, rh = bw * sx, bh * sy
            left += max(0.0, (rw - cw) / 2) / sx
            top += max(0.0, (rh - ch) / 2) / sy
            bw, bh = min(bw, cw / sx), min(bh, ch / sy)
    return (left, top, left + bw, top + bh)
