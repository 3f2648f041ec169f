"""Top-k selections whose candidates are spread over ranks, equal to the single-process selection.

The single-process selections (`topk_rows`, `topk_flat`) give ties at the k-th value to the lowest
(global) indices, so the choice is a function of the scores alone; every rank's local selection under the
same rule holds all of its entries that the global selection takes. Row top-k (TopK, AuxK) with the
features sharded: the top-k of the gathered candidates (k per rank and row, in global column order).
Flat top-K (BatchTopK) over rows or features split across ranks: K candidates per rank give the K-th
value; every entry above it is taken, and the ties at it go to the lowest global flat indices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featurescope.distributed.world import World
from featurescope.sae.kernels import topk_flat, topk_rows
from featurescope.sae.parallel import RowTop


@torch.no_grad()
def global_row_top(world: World, scores: Tensor, k: int) -> RowTop:
    """The k largest entries of each row over every rank's columns; `indices` local, `keep` marks ours."""
    n, m = scores.shape
    first = world.offset(m)
    values = torch.full((n, k), float("-inf"), device=scores.device)
    ids = torch.full((n, k), -1, dtype=torch.int64, device=scores.device)
    kk = min(k, m)
    if kk:
        local = topk_rows(scores, kk).sort(-1).values  # ascending columns: gathered order is global order
        values[:, :kk] = scores.gather(-1, local).float()
        ids[:, :kk] = local + first
    all_values = torch.cat(world.all_gather(values), dim=1)
    all_ids = torch.cat(world.all_gather(ids), dim=1)
    chosen = all_ids.gather(-1, topk_rows(all_values, k))
    keep = (chosen >= first) & (chosen < first + m)
    return RowTop(torch.where(keep, chosen - first, 0), keep)


@torch.no_grad()
def global_top_k_flat(world: World, scores: Tensor, K: int, columns: tuple[int, int] | None = None) -> Tensor:
    """Flat indices into this rank's `scores` [n, m] of its entries among the K largest over all ranks.

    The global matrix is the ranks' row blocks stacked in rank order (data parallel), or, with `columns` =
    (first, total), every rank holds all rows and its columns are [first, first + m) of `total`.
    """
    n, m = scores.shape
    local = scores.reshape(-1)
    kk = min(K, local.numel())
    cand = topk_flat(scores, kk)
    values = torch.full((K,), float("-inf"), device=scores.device)
    values[:kk] = local[cand].float()
    gathered = torch.cat(world.all_gather(values))
    kth = gathered.topk(min(K, gathered.numel()), sorted=False).values.min()
    mine = values[:kk]
    above = mine > kth
    ties = cand[(mine == kth) & torch.isfinite(mine)]
    counts = world.all_gather(torch.tensor([int(above.sum()), ties.numel(), n], device=scores.device))
    need = K - sum(int(c[0]) for c in counts)
    most = max(int(c[1]) for c in counts)
    if need <= 0 or most == 0:
        return cand[above]
    if columns is None:
        keys = ties + sum(int(c[2]) for c in counts[: world.rank]) * m
    else:
        first, total = columns
        keys = torch.div(ties, m, rounding_mode="floor") * total + first + ties % m
    padded = torch.full((most,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=scores.device)
    padded[: keys.numel()] = keys
    all_keys = torch.cat(world.all_gather(padded))
    cutoff = all_keys.sort().values[min(need, all_keys.numel()) - 1]
    return torch.cat([cand[above], ties[keys <= cutoff]])
