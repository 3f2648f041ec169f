"""Which features fire on an image: run it through the VLM and the SAE of a feature database (`search --image`)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from featurescope.analysis.search import ORDERS, load_for_store
from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.featuredb.records import best_label
from featurescope.models import LanguageModel
from featurescope.models.vision import as_vision_model
from featurescope.sae import SAE
from featurescope.vision.encode import encode_image, grid_of


class ImageHit(NamedTuple):
    """A feature firing on the image: its peak, where, and its activation on every patch."""

    feature: int
    max: float
    relative: float
    """max / the feature's max over the analysed data (0 if it never fired there)."""
    label: str
    row: int
    col: int
    """The patch (view 0) where it is highest."""
    acts: list[float]
    """rows × cols activations, row-major."""


class ImageSearch(NamedTuple):
    """The image, its patch grid, and the features that fire most on its patches, strongest first."""

    image: str
    grid: tuple[int, int]
    resized: bool
    hits: list[ImageHit]


@torch.inference_mode()
def search_image(store: FeatureStore, image: str | Path, *, sae: SAE | str | None = None,
                 model: LanguageModel | str | None = None, n: int = 10, by: str = "max", text: str = "",
                 device: str = "cpu") -> ImageSearch:
    """The `n` features with the highest activation (or activation relative to their max) on any patch of `image`."""
    if by not in ORDERS:
        raise FeaturescopeError(f"cannot order by {by!r}; choose one of {', '.join(ORDERS)}")
    if n <= 0:
        raise FeaturescopeError(f"n must be positive (got {n})")
    path = Path(image).expanduser()
    if not path.is_file():
        raise FeaturescopeError(f"{path}: no such image file")
    sae, loaded = load_for_store(store, sae=sae, model=model, device=device)
    vlm = as_vision_model(loaded)
    codes = encode_image(vlm, sae, int(store.meta["layer"]), path, text)
    peak = codes.image.max(dim=0).values if len(codes.image) else torch.zeros(sae.d_sae)
    corpus_max = store.max_activations()
    relative = torch.where(corpus_max > 0, peak / corpus_max.clamp_min(1e-30), 0.0)
    order = (peak if by == "max" else relative).clone()
    order[peak <= 0] = -1.0
    top = order.topk(min(n, sae.d_sae))
    hits = []
    for f, v in zip(top.indices.tolist(), top.values.tolist(), strict=True):
        if v < 0:
            continue
        grid = grid_of(codes, f)
        k = int(grid.flatten().argmax())
        best = best_label(store.labels(f))
        hits.append(ImageHit(f, float(peak[f]), float(relative[f]), best.text if best else "", k // grid.shape[1],
                             k % grid.shape[1], grid.flatten().tolist()))
    return ImageSearch(str(path), codes.grid, codes.fitted.resized, hits)
