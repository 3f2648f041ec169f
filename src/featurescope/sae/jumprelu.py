"""JumpReLU SAE (Rajamanoharan et al. 2024; DeepMind's Gemma Scope).

f = z · H(z − θ) with z = W_enc x + b_enc and per-feature thresholds θ = exp(log_threshold) > 0.
Loss = ‖x − x̂‖² + λ · Σ_i H(z_i − θ_i) (an L0 penalty), λ warmed up linearly. H has no gradient, so θ
learns through straight-through estimators with a rectangle kernel K(u) = 1[|u| ≤ ½] of bandwidth ε:
∂/∂θ [z·H(z − θ)] := −(θ/ε)·K((z − θ)/ε) and ∂/∂θ H(z − θ) := −(1/ε)·K((z − θ)/ε); z gets the plain
gradient H(z − θ) through the activation and none through the penalty. Decoder rows are kept unit norm
(as in Gemma Scope), so λ·L0 cannot be dodged by rescaling.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from featurescope.sae.base import SAE, LossOutput
from featurescope.sae.config import SAEConfig
from featurescope.sae.init import normalize_rows, remove_parallel_grad, tied_init

L0_COEFFICIENT = 1.0
"""Default λ, in this project's units (inputs scaled to E‖x‖ = √d_in, loss summed over d_in)."""
BANDWIDTH = 0.05
"""Default ε of the straight-through estimator."""
INIT_THRESHOLD = 0.1
"""Default initial θ."""
WARMUP = 0.05
"""Default fraction of training over which λ warms up from 0."""


def _rectangle(u: Tensor) -> Tensor:
    return (u.abs() <= 0.5).to(u.dtype)


def _sum_to(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, like.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]  # torch: (ctx, *grads)
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gz = g * (z > theta)
        gtheta = _sum_to(-(theta / eps) * _rectangle((z - theta) / eps) * g, theta)
        return gz, gtheta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: Tensor, theta: Tensor, eps: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]  # torch: (ctx, *grads)
        z, theta = ctx.saved_tensors
        eps = ctx.eps
        gtheta = _sum_to(-(1.0 / eps) * _rectangle((z - theta) / eps) * g, theta)
        return torch.zeros_like(z), gtheta, None


def jumprelu(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """z · H(z − θ), with the straight-through gradient for θ."""
    return _JumpReLU.apply(z, theta, eps)


def step(z: Tensor, theta: Tensor, eps: float) -> Tensor:
    """H(z − θ), with the straight-through gradient for θ (none for z)."""
    return _Step.apply(z, theta, eps)


class JumpReLUSAE(SAE):
    """JumpReLU SAE with a learned threshold per feature (parameter `log_threshold`, read `threshold`).

    Settings read from `cfg.extra`: `l0_coefficient` (λ), `bandwidth` (ε), `init_threshold`, `warmup`.
    """

    architecture = "jumprelu"
    adam_betas, adam_eps = (0.0, 0.999), 1e-8  # Gemma Scope
    default_sparsity_coefficient = L0_COEFFICIENT
    fast_params = ("log_threshold",)
    resamples_dead = True
    training_settings: ClassVar[dict[str, str]] = {
        "l0_coefficient": "sparsity_coefficient", "warmup": "warmup", "bandwidth": "bandwidth",
        "init_threshold": "init_threshold"}

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__(cfg)
        self.log_threshold = nn.Parameter(torch.zeros(cfg.d_sae))
        self.l0_coefficient = float(cfg.extra.get("l0_coefficient", L0_COEFFICIENT))
        self.bandwidth = float(cfg.extra.get("bandwidth", BANDWIDTH))
        self.init_threshold = float(cfg.extra.get("init_threshold", INIT_THRESHOLD))
        self.warmup = float(cfg.extra.get("warmup", WARMUP))

    @property
    def threshold(self) -> Tensor:
        """θ [d_sae], in normalised units."""
        return self.log_threshold.exp()

    def reset_parameters(self, generator: torch.Generator) -> None:
        tied_init(self, generator, dec_norm=1.0)
        with torch.no_grad():
            self.log_threshold.fill_(math.log(self.init_threshold))

    def activation(self, pre: Tensor) -> Tensor:
        return pre * (pre > self.threshold)

    def feature_thresholds(self, index: Tensor) -> Tensor:
        return self.threshold.detach()[index]

    def training_loss(self, x_norm: Tensor, progress: float, dead: Tensor | None = None) -> LossOutput:
        par = self.parallel
        pre = self.pre_acts(x_norm)
        theta = self.threshold
        f = jumprelu(pre, theta, self.bandwidth)
        x_hat = par.features_sum(f @ self.W_dec) + self.b_dec
        mse = par.row_mean((x_hat - x_norm).pow(2).sum(-1))
        l0_soft = par.row_mean(par.features_sum(step(pre, theta, self.bandwidth).sum(-1)))
        coef = self.l0_coefficient * (min(1.0, progress / self.warmup) if self.warmup > 0 else 1.0)
        loss = mse + coef * l0_soft
        with torch.no_grad():
            active = f > 0
            fired = active.any(0)
            l0 = active.sum().float() / par.rows(x_norm.shape[0])
        return LossOutput(loss, x_hat, l0, fired, {"mse": mse.detach(), "l0_penalty": l0_soft.detach()})

    def before_step(self) -> None:
        remove_parallel_grad(self.W_dec)

    def after_step(self) -> None:
        normalize_rows(self.W_dec.data)

    def per_feature_params(self) -> list[str]:
        return [*super().per_feature_params(), "log_threshold"]

    @torch.no_grad()
    def reinit_features(self, idx: Tensor, directions: Tensor, enc_norm: float, dec_norm: float) -> None:
        super().reinit_features(idx, directions, enc_norm, 1.0)
        self.log_threshold[idx] = math.log(self.init_threshold)
