"""The feature map: UMAP by default (umap-learn is a dependency) keeps clusters of directions apart where PCA
mixes them."""

from __future__ import annotations

import torch

from featurescope.analysis.feature_map import feature_map, have_umap, pca_map


def _clusters(k: int = 8, per: int = 40, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """`k` clusters of `per` noisy directions around random centres in `d` dimensions, and their labels."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, d, generator=g)
    return (centres.repeat_interleave(per, 0) + 0.35 * torch.randn(k * per, d, generator=g),
            torch.arange(k).repeat_interleave(per))


def _neighbour_purity(xy: torch.Tensor, labels: torch.Tensor, n: int = 10) -> float:
    """Fraction of each point's `n` nearest map neighbours that share its cluster."""
    dist = torch.cdist(xy.double(), xy.double())
    dist.fill_diagonal_(float("inf"))
    return float((labels[dist.topk(n, largest=False).indices] == labels[:, None]).float().mean())


def test_default_map_is_umap_and_keeps_clusters_apart_better_than_pca():
    assert have_umap()
    w, labels = _clusters()
    m = feature_map(w)
    assert m is not None and m.method == "umap"
    assert m.xy.shape == (len(w), 2) and float(m.xy.min()) >= 0 and float(m.xy.max()) <= 1
    umap_purity, pca_purity = _neighbour_purity(m.xy, labels), _neighbour_purity(pca_map(w), labels)
    assert umap_purity > 0.97 and umap_purity > pca_purity + 0.05, (umap_purity, pca_purity)
    assert feature_map(w[:32]).method == "pca"  # too few features for UMAP
