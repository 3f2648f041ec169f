"""Nearest neighbours of features by cosine similarity of their decoder directions."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


def unit_rows(w: Tensor) -> Tensor:
    """Rows scaled to unit norm (zero rows stay zero)."""
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


class Neighbours(NamedTuple):
    """For each feature, the `n` others with the highest decoder cosine, highest first."""

    ids: Tensor
    """[d_sae, n] int64."""
    cosine: Tensor
    """[d_sae, n] float32."""


@torch.inference_mode()
def nearest_neighbours(w_dec: Tensor, n: int = 10, chunk: int = 1024) -> Neighbours:
    """Exact top-`n` cosine neighbours of every decoder row (itself excluded), `chunk` rows at a time."""
    u = unit_rows(w_dec.float())
    d_sae = len(u)
    n = min(n, d_sae - 1)
    ids, cos = [], []
    for s in range(0, d_sae, chunk):
        sims = u[s:s + chunk] @ u.T
        rows = torch.arange(len(sims), device=u.device)
        sims[rows, rows + s] = -float("inf")
        top = sims.topk(n, dim=1)
        ids.append(top.indices.cpu())
        cos.append(top.values.cpu())
    return Neighbours(torch.cat(ids), torch.cat(cos))
