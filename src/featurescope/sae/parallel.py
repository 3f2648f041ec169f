"""How a training step is split across processes, as the SAE losses see it; `LOCAL` is one process.

A training loss reduces over two axes: the rows of the batch and the SAE's features. Data parallelism
splits the rows across ranks, feature sharding splits the features. The losses write every reduction
through the SAE's `parallel` (a `Parallel`); this base class is one process with nothing split, where each
method is the plain single-process operation. `featurescope.train.data_parallel` and
`featurescope.train.feature_shard` implement the split versions.

Conventions: a *row share* is this rank's part of a mean over the batch's rows (the loss, its terms; they
sum over row-split ranks to the single-process value); an *entry share* is this rank's part of a count over
(row, feature) entries (L0; it sums over all ranks).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from featurescope.sae.kernels import Pattern, topk_flat, topk_rows


class RowTop(NamedTuple):
    """The k largest entries of each row: `indices` [n, k] into this rank's columns."""

    indices: Tensor
    keep: Tensor | None
    """Bool [n, k]: which entries this rank owns (None: all; feature sharding gives the others' a mask)."""


def row_pattern(top: RowTop) -> Pattern:
    """The `Pattern` of the entries of `top` that this rank owns."""
    if top.keep is None:
        return Pattern.from_topk(top.indices)
    n, k = top.indices.shape
    keep = top.keep.reshape(-1)
    rows = torch.arange(n, device=keep.device).repeat_interleave(k)[keep]
    cols = top.indices.reshape(-1)[keep].long()
    counts = torch.bincount(rows, minlength=n)
    return Pattern(rows, cols, torch.cumsum(counts, 0) - counts, n)


class Parallel:
    """One process: the batch's rows and the features are all here."""

    rows_split = False
    features_split = False

    # -- rows -------------------------------------------------------------------------------
    def rows(self, n: int) -> int:
        """Rows in the global batch, of which this rank holds `n`."""
        return n

    def row_mean(self, t: Tensor) -> Tensor:
        """Mean of per-row values `t` [n] over the global batch (this rank's row share)."""
        return t.mean()

    @torch.no_grad()
    def batch_variance(self, x: Tensor) -> Tensor:
        """Σ‖x − mean(x)‖² / N over the global batch (the same on every rank)."""
        return (x - x.mean(0)).pow(2).sum(-1).mean()

    def rows_sum(self, t: Tensor) -> Tensor:
        """Sum of `t` over the ranks that split the rows (no gradient)."""
        return t

    def rows_gather(self, t: Tensor) -> Tensor:
        """The global batch's rows of per-row values `t` [n, ...], in order (no gradient)."""
        return t

    # -- features -----------------------------------------------------------------------------
    def feature_range(self, d_sae: int) -> tuple[int, int, int]:
        """(first, end, total) of the features held here, of which there are `d_sae`."""
        return 0, d_sae, d_sae

    def feature_input(self, t: Tensor) -> Tensor:
        """`t` as the input of this rank's features (feature sharding sums its gradient over ranks)."""
        return t

    def features_sum(self, t: Tensor) -> Tensor:
        """Sum over feature shards of a partial result computed from this rank's features (differentiable)."""
        return t

    def features_total(self, t: Tensor) -> Tensor:
        """Sum of `t` over feature shards (no gradient)."""
        return t

    def features_mean(self, t: Tensor) -> Tensor:
        """Mean of per-feature values `t` over all shards' features (no gradient)."""
        return t.mean()

    def features_offset(self, n: int) -> int:
        """Items on the feature shards before this one, each shard counting `n` of its own."""
        return 0

    # -- everything ---------------------------------------------------------------------------
    def all_sum(self, t: Tensor) -> Tensor:
        """Sum over all ranks (no gradient)."""
        return t

    def all_min(self, t: Tensor) -> Tensor:
        """Minimum over all ranks (no gradient)."""
        return t

    def row_top(self, scores: Tensor, k: int) -> RowTop:
        """The k largest entries of each row over all features (no gradient)."""
        return RowTop(topk_rows(scores, k), None)

    def top_k_flat(self, scores: Tensor, K: int) -> Tensor:
        """Flat indices into `scores` of the entries among the K largest of the global [rows, features]."""
        return topk_flat(scores, K)


LOCAL = Parallel()
"""The single-process `Parallel` every SAE starts with."""
