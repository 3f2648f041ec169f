"""Shared pieces of the architectures: initial weights and the unit-norm decoder constraint."""

from __future__ import annotations

import torch
from torch import Tensor

from featurescope.sae.base import SAE

INIT_BLOCK = 1 << 16
"""Directions are drawn in blocks of this many rows: block 0 from the given generator, block b > 0 from a
generator of its own (seeded from the given one's seed and b), so a feature shard draws only its rows."""


def _block_generator(generator: torch.Generator, block: int) -> torch.Generator:
    if block == 0:
        return generator
    return torch.Generator().manual_seed((generator.initial_seed() * 1_000_003 + block) % 2**63)


def random_directions(n: int, d: int, generator: torch.Generator, rows: tuple[int, int] | None = None) -> Tensor:
    """Rows `rows` = (first, end) (default: all) of `n` unit vectors in R^d, uniform on the sphere."""
    lo, hi = rows or (0, n)
    parts = []
    for block in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK)):
        start = block * INIT_BLOCK
        v = torch.randn(min(INIT_BLOCK, n - start), d, generator=_block_generator(generator, block))
        parts.append(v[max(lo, start) - start : hi - start])
    v = torch.cat(parts) if parts else torch.zeros(0, d)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def tied_init(sae: SAE, generator: torch.Generator, dec_norm: float) -> None:
    """Decoder rows: random directions of norm `dec_norm`; encoder = decoder transposed; biases zero.

    A feature shard (`sae.parallel.feature_range`) gets its rows of the whole SAE's initialisation.
    """
    lo, hi, total = sae.parallel.feature_range(sae.d_sae)
    w = random_directions(total, sae.d_in, generator, (lo, hi)) * dec_norm
    sae.W_dec.copy_(w)
    sae.W_enc_rows.copy_(w)
    sae.b_enc.zero_()
    sae.b_dec.zero_()


@torch.no_grad()
def remove_parallel_grad(W: Tensor) -> None:
    """Drop the component of each row's gradient along the row (keeps unit rows unit to first order)."""
    if W.grad is None:
        return
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    W.grad -= (W.grad * unit).sum(1, keepdim=True) * unit


@torch.no_grad()
def normalize_rows(W: Tensor) -> None:
    """Rescale each row of `W` to unit norm, in place."""
    W /= W.norm(dim=1, keepdim=True).clamp_min(1e-12)
