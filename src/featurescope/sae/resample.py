"""Resampling dead features (Anthropic, "Towards Monosemanticity"), for the ReLU and JumpReLU SAEs.

A dead feature is pointed at the residual x − x̂ of an input drawn with probability ∝ ‖x − x̂‖⁴ (the
square of its loss), so it starts out covering something the SAE reconstructs badly: decoder row = that
unit direction times the mean norm of the live decoder rows, encoder row = the same direction times 0.2 ×
the mean norm of the live encoder rows, encoder bias 0; its Adam moments are reset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featurescope.sae.base import SAE

ENCODER_SCALE = 0.2


@torch.no_grad()
def resample_dead(sae: SAE, optimizer: torch.optim.Optimizer, dead: Tensor, x_norm: Tensor, x_hat: Tensor,
                  generator: torch.Generator) -> int:
    """Re-initialise the features marked in `dead` (bool [d_sae]) from one batch; returns how many.

    Split training (`sae.parallel`) resamples from the global batch: every rank draws the same inputs with
    the same generator, and a feature shard takes the draws of its own dead features.
    """
    par = sae.parallel
    idx = dead.nonzero().squeeze(1)
    n_here = idx.numel()
    n = int(par.features_total(torch.tensor(n_here, device=dead.device)))
    if n == 0 or n == int(par.features_total(torch.tensor(sae.d_sae, device=dead.device))):
        return 0
    residual = par.rows_gather((x_norm - x_hat).float())
    weights = residual.pow(2).sum(1).pow(2)
    if not bool(weights.sum() > 0):
        return 0
    rows = torch.multinomial(weights.cpu(), n, replacement=True, generator=generator).to(residual.device)
    first = par.features_offset(n_here)
    directions = residual[rows[first : first + n_here]]
    directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    alive = ~dead
    enc_norm = ENCODER_SCALE * float(par.features_mean(sae.W_enc_rows[alive].norm(dim=1)))
    dec_norm = float(par.features_mean(sae.W_dec[alive].norm(dim=1)))
    sae.reinit_features(idx, directions.to(sae.W_dec.dtype), enc_norm, dec_norm)
    params = dict(sae.named_parameters())
    for name in sae.per_feature_params():
        state = optimizer.state.get(params[name], {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][idx] = 0.0
    return n
