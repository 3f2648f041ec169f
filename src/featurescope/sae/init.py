"""Shared pieces of the architectures: initial weights and the unit-norm decoder constraint."""

from __future__ import annotations

import torch
from torch import Tensor

from featurescope.sae.base import SAE


def random_directions(n: int, d: int, generator: torch.Generator) -> Tensor:
    """`n` unit vectors in R^d, uniformly distributed on the sphere."""
    v = torch.randn(n, d, generator=generator)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def tied_init(sae: SAE, generator: torch.Generator, dec_norm: float) -> None:
    """Decoder rows: random directions of norm `dec_norm`; encoder = decoder transposed; biases zero."""
    w = random_directions(sae.d_sae, sae.d_in, generator) * dec_norm
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
