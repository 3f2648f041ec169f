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

`FAMILIES` maps each supported `model_type` to its `FamilyLayout` (what differs between families: where image
tokens sit, the prompt's image placeholder, the processor's inputs and image-size bound); `family_layout`
looks one up.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError


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


def _tiled(ids: Tensor, token: int, tokenizer: Any, family: str) -> list[ImagePatches]:
    """Idefics3 / SmolVLM: tile runs after `<row_i_col_j>`, then the global run after `<global-img>`."""
    global_id = tokenizer.convert_tokens_to_ids("<global-img>")
    out: list[ImagePatches] = []
    tiles: list[tuple[int, int, int, int]] = []  # (start, length, tile row, tile col)
    for start, n in runs(ids, token):
        marker = int(ids[start - 1]) if start > 0 else -1
        if marker == global_id:
            glob = _square(start, n, family)
            if not tiles:
                out.append(glob)
                continue
            m = math.isqrt(tiles[0][1])
            n_rows, n_cols = max(t[2] for t in tiles) + 1, max(t[3] for t in tiles) + 1
            parts = [_square(s, length, family) for s, length, _, _ in tiles]
            pos = torch.cat([p.positions for p in parts] + [glob.positions])
            row = torch.cat([p.row + tr * m for p, (_, _, tr, _) in zip(parts, tiles, strict=True)] + [glob.row])
            col = torch.cat([p.col + tc * m for p, (_, _, _, tc) in zip(parts, tiles, strict=True)] + [glob.col])
            view = torch.cat([torch.zeros(len(pos) - n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
            out.append(ImagePatches(pos, view, row, col, (n_rows * m, n_cols * m)))
            tiles = []
            continue
        name = tokenizer.convert_ids_to_tokens(marker) if marker >= 0 else ""
        if not (isinstance(name, str) and name.startswith("<row_") and "_col_" in name):
            raise FeaturescopeError(f"{family}: a run of image tokens at position {start} follows {name!r}, not a "
                                    "tile or global-image marker")
        r, c = name[len("<row_"):-1].split("_col_")
        tiles.append((start, n, int(r) - 1, int(c) - 1))
    if tiles:
        raise FeaturescopeError(f"{family}: image tiles without their global image (the sequence was cut short?)")
    return out


def _size(d: Any, *keys: str) -> Any:
    if d is None:
        return None
    for k in keys:
        v = d.get(k) if isinstance(d, dict) else getattr(d, k, None)
        if v:
            return v
    return None


class Limit(NamedTuple):
    """The largest image a processor uses as it is (None: no such bound).

    `longest_edge` and `max_pixels` bound the image; `input_size` (w, h) is a fixed input that every image is
    resized to: a larger image is only downscaled as far as both sides stay at least that size.
    """

    longest_edge: int | None = None
    max_pixels: int | None = None
    input_size: tuple[int, int] | None = None

    def describe(self) -> str:
        parts = []
        if self.longest_edge:
            parts.append(f"{self.longest_edge} px longest edge")
        if self.max_pixels:
            parts.append(f"{self.max_pixels:,} pixels")
        if self.input_size:
            parts.append(f"{self.input_size[0]}×{self.input_size[1]} px input")
        return " and ".join(parts) or "none"


def _setting(image_processor: Any, key: str) -> Any:
    """`key` of the image processor's `size` (a dict or an object), None if absent."""
    size = getattr(image_processor, "size", None) or {}
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass(frozen=True)
class FamilyLayout(ABC):
    """What differs between VLM families: where an image's tokens sit and how the processor takes images."""

    name: str
    """The family's `model_type`, as errors name it."""
    clip_crop: bool = False
    """True if view 0 covers a CLIP-style pad / resize / centre-crop box (LLaVA), not the whole image."""
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the processor call (Gemma 3: no pan-and-scan crops)."""

    @abstractmethod
    def locate(self, ids: Tensor, image_token: int, *, tokenizer: Any = None, image_grid_thw: Tensor | None = None,
               merge_size: int = 2) -> list[ImagePatches]:
        """The patches of every image in the 1-D token ids `ids`, in order of appearance."""

    @abstractmethod
    def limit(self, image_processor: Any) -> Limit:
        """The largest image `image_processor` uses as it is."""

    def placeholder(self, image_token: str) -> str:
        """The text that stands for one image in a raw prompt."""
        return image_token

    def nest(self, images: list[Any]) -> list[Any]:
        """One image per prompt, nested as the processor takes them (a list of images per prompt)."""
        return [[im] for im in images]

    def canvas(self, image_processor: Any, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The box (left, top, right, bottom) of an image of `size` (w, h) that view 0's grid covers.

        CLIP-style processors (LLaVA) may pad to a square, resize the shortest edge and centre-crop; the others
        resize (or tile) the whole image.
        """
        w, h = size
        if not self.clip_crop:
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


@dataclass(frozen=True)
class SquareRuns(FamilyLayout):
    """LLaVA, Gemma 3, PaliGemma: one square run per image; the processor resizes to a fixed input."""

    def locate(self, ids: Tensor, image_token: int, *, tokenizer: Any = None, image_grid_thw: Tensor | None = None,
               merge_size: int = 2) -> list[ImagePatches]:
        return [_square(start, n, self.name) for start, n in runs(ids, image_token)]

    def limit(self, image_processor: Any) -> Limit:
        width, height = _setting(image_processor, "width"), _setting(image_processor, "height")
        shortest = _setting(image_processor, "shortest_edge")
        if height and width:
            return Limit(input_size=(int(width), int(height)))
        if shortest:
            return Limit(input_size=(int(shortest), int(shortest)))
        return Limit()


@dataclass(frozen=True)
class Tiled(FamilyLayout):
    """Idefics3 / SmolVLM: tile runs after `<row_i_col_j>` markers, then the global image's run."""

    def locate(self, ids: Tensor, image_token: int, *, tokenizer: Any = None, image_grid_thw: Tensor | None = None,
               merge_size: int = 2) -> list[ImagePatches]:
        return _tiled(ids, image_token, tokenizer, self.name)

    def limit(self, image_processor: Any) -> Limit:
        return Limit(longest_edge=_setting(image_processor, "longest_edge"))


@dataclass(frozen=True)
class Qwen(FamilyLayout):
    """Qwen2-VL / Qwen2.5-VL: one run per image over its merged patch grid (`image_grid_thw`)."""

    def locate(self, ids: Tensor, image_token: int, *, tokenizer: Any = None, image_grid_thw: Tensor | None = None,
               merge_size: int = 2) -> list[ImagePatches]:
        found = runs(ids, image_token)
        if image_grid_thw is None or len(image_grid_thw) != len(found):
            raise FeaturescopeError(f"{self.name}: {len(found)} image runs but "
                                    f"{0 if image_grid_thw is None else len(image_grid_thw)} image grids")
        out = []
        for (start, n), (t, h, w) in zip(found, image_grid_thw.tolist(), strict=True):
            rows, cols = h // merge_size, w // merge_size
            if t * rows * cols != n:
                raise FeaturescopeError(f"{self.name}: a run of {n} image tokens does not match its grid {t}×{h}×{w}")
            out.append(_grid(start, rows, cols))
        return out

    def limit(self, image_processor: Any) -> Limit:
        return Limit(max_pixels=getattr(image_processor, "max_pixels", None) or _setting(image_processor,
                                                                                          "longest_edge"))

    def placeholder(self, image_token: str) -> str:
        return f"<|vision_start|>{image_token}<|vision_end|>"

    def nest(self, images: list[Any]) -> list[Any]:
        return list(images)


FAMILIES: dict[str, FamilyLayout] = {
    "llava": SquareRuns("llava", clip_crop=True),
    "gemma3": SquareRuns("gemma3", processor_kwargs={"do_pan_and_scan": False}),
    "paligemma": SquareRuns("paligemma"),
    "idefics3": Tiled("idefics3"),
    "smolvlm": Tiled("smolvlm"),
    "qwen2_vl": Qwen("qwen2_vl"),
    "qwen2_5_vl": Qwen("qwen2_5_vl"),
}
"""Every supported VLM family (its config's `model_type`) and its layout."""


def family_layout(family: str, *, model: str = "") -> FamilyLayout:
    """The layout of `family`; an unsupported one is an error (naming `model` if given)."""
    layout = FAMILIES.get(family)
    if layout is None:
        raise FeaturescopeError(f"{model + ': ' if model else ''}featurescope does not know the image-token layout "
                                f"of {family} models (supported: {', '.join(FAMILIES)})")
    return layout
