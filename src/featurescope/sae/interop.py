"""Shared by the SAELens and sparsify converters: weights in raw units, exact folds, SAEs from plain tensors.

Our SAE computes, with s = `input_scale` and a = `apply_b_dec_to_input`,

    pre = (s·x − a·b_dec) W_encᵀ + b_enc,   f = act(pre),   x̂ = (f W_dec + b_dec) / s.

A peer without input normalisation computes the same f and x̂ from raw x with
W_enc' = s·W_enc, b_dec' = b_dec/s, W_dec' = W_dec/s and b_enc, thresholds and a unchanged
(`unscaled_weights`). Folds are computed in float64 and rounded once to the SAE's dtype.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError
from featurescope.sae.base import SAE
from featurescope.sae.config import SAEConfig
from featurescope.sae.jumprelu import JumpReLUSAE
from featurescope.sae.registry import architecture_class
from featurescope.sae.topk import BatchTopKSAE

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_SPARSIFY_LAYER = re.compile(r"^(?:model\.)?(?:layers|h|blocks)\.(\d+)$")


class PlainWeights(NamedTuple):
    """An SAE's weights in one set of units (float64): pre = (x − a·b_dec) W_enc_rowsᵀ + b_enc."""

    W_enc_rows: Tensor
    """[d_sae, d_in]"""
    b_enc: Tensor
    """[d_sae]"""
    W_dec: Tensor
    """[d_sae, d_in]"""
    b_dec: Tensor
    """[d_in]"""
    threshold: Tensor | None
    """[d_sae] per-feature (jumprelu) or [] one for all (batchtopk); None for relu / topk."""


def threshold_of(sae: SAE) -> Tensor | None:
    """The inference threshold of a jumprelu ([d_sae]) or batchtopk ([]) SAE, as the SAE computes it."""
    if sae.cfg.architecture in ("jumprelu", "batchtopk"):
        return torch.as_tensor(sae.threshold).detach()
    return None


@torch.no_grad()
def unscaled_weights(sae: SAE) -> PlainWeights:
    """`sae`'s weights with `input_scale` folded in: the same f and x̂ from raw x (float64)."""
    s = float(sae.input_scale)
    if not math.isfinite(s) or s <= 0:
        raise FeaturescopeError(f"cannot export an SAE with input_scale {s} (must be positive and finite)")
    d = torch.float64
    thr = threshold_of(sae)
    return PlainWeights(
        W_enc_rows=sae.W_enc_rows.detach().to(d) * s,
        b_enc=sae.b_enc.detach().to(d).clone(),
        W_dec=sae.W_dec.detach().to(d) / s,
        b_dec=sae.b_dec.detach().to(d) / s,
        threshold=None if thr is None else thr.to(d),
    )


def fold_b_dec_into_b_enc(w: PlainWeights) -> PlainWeights:
    """Weights for a peer that always subtracts b_dec, from ones that don't: b_enc' = b_enc + b_dec W_encᵀ."""
    return w._replace(b_enc=w.b_enc + w.W_enc_rows @ w.b_dec)


def fold_decoder_norms(w: PlainWeights) -> PlainWeights:
    """Make decoder rows unit norm without changing f·W_dec: pre and thresholds scale with the norms.

    For SAELens' `rescale_acts_by_decoder_norm`, where pre' = pre·‖W_dec,i‖ and x̂ = (f/‖W_dec,i‖) W_dec.
    """
    norms = w.W_dec.norm(dim=1)
    if bool((norms == 0).any()):
        raise FeaturescopeError("cannot fold decoder norms: some decoder rows are zero")
    return w._replace(W_enc_rows=w.W_enc_rows * norms[:, None], b_enc=w.b_enc * norms,
                      W_dec=w.W_dec / norms[:, None])


def fold_whitening(
    w: PlainWeights, mean: Tensor, matrix: Tensor, inverse: Tensor, apply_b_dec: bool
) -> PlainWeights:
    """Absorb an affine input map z = (x − mean) M, x̂ = ẑ M⁻¹ + mean into the weights (as SAELens does)."""
    d = torch.float64
    mean, matrix, inverse = mean.to(d), matrix.to(d), inverse.to(d)
    W_enc_rows = (matrix @ w.W_enc_rows.T).T
    b_enc = w.b_enc if apply_b_dec else w.b_enc - W_enc_rows @ mean
    return w._replace(W_enc_rows=W_enc_rows, b_enc=b_enc, W_dec=w.W_dec @ inverse,
                      b_dec=w.b_dec @ inverse + mean)


@torch.no_grad()
def build_sae(cfg: SAEConfig, w: PlainWeights, *, input_scale: float = 1.0) -> SAE:
    """An SAE of `cfg.architecture` holding weights `w` (in the units after multiplying by `input_scale`)."""
    sae = architecture_class(cfg.architecture)(cfg)
    dt = sae.W_dec.dtype
    sae.W_enc_rows.copy_(w.W_enc_rows.to(dt))
    sae.b_enc.copy_(w.b_enc.to(dt))
    sae.W_dec.copy_(w.W_dec.to(dt))
    sae.b_dec.copy_(w.b_dec.to(dt))
    sae.input_scale.fill_(input_scale)
    thr = w.threshold
    if isinstance(sae, JumpReLUSAE):
        if thr is None or thr.shape != (cfg.d_sae,):
            raise FeaturescopeError(f"a jumprelu SAE needs a threshold of shape ({cfg.d_sae},)")
        # Our θ = exp(log_threshold) > 0 and f = pre·[pre > θ]; ReLU(pre)·[pre > t] = pre·[pre > max(t, 0)].
        sae.log_threshold.copy_(thr.to(torch.float64).clamp_min(0).log().to(sae.log_threshold.dtype))
    elif isinstance(sae, BatchTopKSAE):
        if thr is None or thr.numel() != 1:
            raise FeaturescopeError("a batchtopk SAE needs one threshold")
        sae.threshold.fill_(float(thr.reshape(())))
    return sae


def uniform_threshold(thr: Tensor) -> float | None:
    """The common value of a per-feature threshold if all are equal, else None."""
    flat = thr.reshape(-1)
    return float(flat[0]) if flat.numel() and bool((flat == flat[0]).all()) else None


def layer_from_hook(hook: str | None) -> int | None:
    """The block whose output a hook name reads: TransformerLens' resid_post L → L, resid_pre L → L − 1,
    sparsify's `layers.L` → L; None when the hook is not the residual stream after a block."""
    if not hook:
        return None
    for pattern, offset in ((_RESID_POST, 0), (_RESID_PRE, -1), (_SPARSIFY_LAYER, 0)):
        m = pattern.match(hook)
        if m:
            layer = int(m.group(1)) + offset
            return layer if layer >= 0 else None
    return None
