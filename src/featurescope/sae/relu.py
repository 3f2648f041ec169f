"""Anthropic's ReLU SAE (April 2024 update, as used in "Scaling Monosemanticity").

f = ReLU(W_enc x + b_enc), x̂ = W_dec f + b_dec, loss = ‖x − x̂‖² + λ · Σ_i f_i ‖W_dec,i‖₂, with ‖·‖² summed
over d_in and everything averaged over the batch; λ warms up linearly from 0. No b_dec is subtracted
from the input, decoder rows are not constrained (their norms sit inside the penalty) and start as
random directions of norm 0.1 with W_enc = W_decᵀ.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from featurescope.sae.base import SAE, LossOutput
from featurescope.sae.config import SAEConfig
from featurescope.sae.init import tied_init

L1_COEFFICIENT = 5.0
"""Anthropic's λ for inputs scaled to E‖x‖ = √d_in."""
INIT_DECODER_NORM = 0.1
WARMUP = 0.05
"""Fraction of training over which λ warms up from 0 (Anthropic: 5%)."""
LR = 3e-3
"""Default learning rate (see docs/training.md for why not the paper's 5e-5)."""


class ReLUSAE(SAE):
    """ReLU SAE with the decoder-norm-weighted L1 penalty.

    Settings read from `cfg.extra`: `l1_coefficient` (λ), `warmup`.
    """

    architecture = "relu"
    adam_betas, adam_eps = (0.9, 0.999), 1e-8  # Anthropic
    default_sparsity_coefficient = L1_COEFFICIENT
    resamples_dead = True
    training_settings: ClassVar[dict[str, str]] = {"l1_coefficient": "sparsity_coefficient", "warmup": "warmup"}

    @classmethod
    def default_lr(cls, features: int) -> float:
        """3e-3, whatever the width (the decoder norms are free)."""
        return LR

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.l1_coefficient = float(cfg.extra.get("l1_coefficient", L1_COEFFICIENT))
        self.warmup = float(cfg.extra.get("warmup", WARMUP))

    def reset_parameters(self, generator: torch.Generator) -> None:
        tied_init(self, generator, dec_norm=INIT_DECODER_NORM)

    def activation(self, pre: Tensor) -> Tensor:
        return pre.relu()

    def feature_thresholds(self, index: Tensor) -> Tensor:
        return self.b_enc.detach().new_zeros(len(index))

    def training_loss(self, x_norm: Tensor, progress: float, dead: Tensor | None = None) -> LossOutput:
        par = self.parallel
        f = self.pre_acts(x_norm).relu()
        x_hat = par.features_sum(f @ self.W_dec) + self.b_dec
        mse = par.row_mean((x_hat - x_norm).pow(2).sum(-1))
        l1 = par.row_mean(par.features_sum(f @ self.W_dec.norm(dim=1)))
        coef = self.l1_coefficient * (min(1.0, progress / self.warmup) if self.warmup > 0 else 1.0)
        loss = mse + coef * l1
        with torch.no_grad():
            active = f > 0
            fired = active.any(0)
            l0 = active.sum().float() / par.rows(x_norm.shape[0])
        return LossOutput(loss, x_hat, l0, fired, {"mse": mse.detach(), "l1": l1.detach()})

