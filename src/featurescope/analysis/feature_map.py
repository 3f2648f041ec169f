"""A 2-D map of all decoder directions: UMAP (cosine; umap-learn is a dependency), else PCA of the unit directions.

PCA remains for fewer than 64 features, `--map pca`, and an install without umap-learn. UMAP's first call in a
process spends tens of seconds compiling its numba kernels. Coordinates are scaled into [0, 1] × [0, 1].
"""

from __future__ import annotations

import importlib.util
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from featurescope.analysis.neighbours import nearest_neighbours, unit_rows
from featurescope.errors import FeaturescopeError

METHODS = ("auto", "umap", "pca", "none")


class FeatureMap(NamedTuple):
    """Map coordinates and how they were made."""

    xy: Tensor
    """[d_sae, 2] float32 in [0, 1]."""
    method: str


def have_umap() -> bool:
    """Whether umap-learn is installed."""
    return importlib.util.find_spec("umap") is not None


def _scale(xy: Tensor) -> Tensor:
    lo, hi = xy.min(0).values, xy.max(0).values
    return ((xy - lo) / (hi - lo).clamp_min(1e-12)).float()


def pca_map(w_dec: Tensor) -> Tensor:
    """First two principal components of the centred unit directions (eigenvectors of their d_in × d_in
    scatter matrix; each axis points the way of its largest coordinate)."""
    u = unit_rows(w_dec.double().cpu())
    u = u - u.mean(0)
    _, vectors = torch.linalg.eigh(u.T @ u)  # ascending eigenvalues
    xy = u @ vectors[:, -2:].flip(1)
    xy = xy * torch.where(xy.gather(0, xy.abs().argmax(0, keepdim=True)) < 0, -1.0, 1.0)
    if xy.shape[1] < 2:
        xy = torch.cat([xy, torch.zeros(len(xy), 2 - xy.shape[1], dtype=xy.dtype)], 1)
    return _scale(xy)


def umap_map(w_dec: Tensor, seed: int = 0, n_neighbors: int = 15) -> Tensor:
    """UMAP of the decoder directions with the cosine metric, on exact neighbours computed here (umap-learn's
    own search, pynndescent, would compile more numba kernels on every first call)."""
    import warnings

    import umap

    u = unit_rows(w_dec.float().cpu())
    n = min(n_neighbors, len(u) - 1)
    near = nearest_neighbours(u, n - 1)
    self_ids = torch.arange(len(u)).unsqueeze(1)
    ids = torch.cat([self_ids, near.ids], 1).numpy().astype(np.int32)
    dist = torch.cat([torch.zeros(len(u), 1), (1 - near.cosine).clamp_min(0)], 1).numpy().astype(np.float32)
    reducer = umap.UMAP(n_components=2, metric="cosine", n_neighbors=n, min_dist=0.1, n_jobs=1, random_state=seed,
                        precomputed_knn=(ids, dist, None))
    with warnings.catch_warnings():  # "n_jobs overridden by random_state"; no transform() without a search index
        warnings.simplefilter("ignore", UserWarning)
        xy = reducer.fit_transform(u.numpy())
    return _scale(torch.from_numpy(xy).double())


def feature_map(w_dec: Tensor, method: str = "auto", seed: int = 0) -> FeatureMap | None:
    """Map coordinates by `method` (auto: UMAP if installed and there are enough features, else PCA)."""
    if method not in METHODS:
        raise FeaturescopeError(f"unknown map method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "none" or len(w_dec) < 2:
        return None
    if method == "umap" and not have_umap():
        raise FeaturescopeError("`map` umap needs umap-learn: pip install umap-learn", settings=("map",))
    if method == "umap" or (method == "auto" and have_umap() and len(w_dec) >= 64):
        return FeatureMap(umap_map(w_dec, seed), "umap")
    return FeatureMap(pca_map(w_dec), "pca")
