"""Massive-activation positions: residual norms far above the typical ones, which the SAE does not read.

Gemma 3 270M at layer 9 has norms of 4–10k at most positions and ~60k at some (possessive apostrophes,
among others), almost all of it in one dimension (163) — the "massive activations" of Sun et al. (2024),
which act like the BOS position's. Like BOS, they are not SAE rows: harvest leaves them out and the
CE-loss splice keeps the model's own activation there.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_NORM_RATIO = 4.0
"""A position whose norm exceeds this × the median norm of the other positions is an outlier."""


def outlier_positions(norms: Tensor, rows: Tensor, ratio: float = MAX_NORM_RATIO) -> Tensor:
    """Positions among `rows` (a bool mask shaped like `norms`) whose norm exceeds `ratio` × the median norm over
    `rows`; all False when `ratio` ≤ 0 or there are no rows."""
    if ratio <= 0 or not bool(rows.any()):
        return torch.zeros_like(rows)
    median = norms[rows].float().median()
    return rows & (norms.float() > ratio * median)
