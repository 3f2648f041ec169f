"""Logit effects: the direct effect of each feature's decoder direction on the next-token logits.

effect_i = W_U · (g ⊙ c(ŵ_i)), where ŵ_i is the unit decoder direction of feature i, g the final norm's
per-dimension gain and c centring for LayerNorm (RMSNorm does not centre). This is how the model reads a
direction added to the residual stream, up to the positive factor 1/rms(x) of the normalisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from featurescope.analysis.neighbours import unit_rows
from featurescope.analysis.screen import full_extremes, screened_extremes, worth_screening


class NormScale(NamedTuple):
    """The final norm seen as a linear map on directions: scale by `gain`, after centring if `center`."""

    gain: Tensor
    """[d_model] float32."""
    center: bool


def _is_layernorm(norm: nn.Module) -> bool:
    return isinstance(norm, nn.LayerNorm) or "LayerNorm" in type(norm).__name__


@torch.inference_mode()
def norm_scale(norm: nn.Module | None, d_model: int) -> NormScale:
    """The gain of the final norm: LayerNorm's weight; for RMS norms it is probed, which gets Gemma's (1 + w)
    and Llama's w alike (a constant input has rms 1, so the output is the gain, up to √(1 + eps))."""
    if norm is None:
        return NormScale(torch.ones(d_model), False)
    if _is_layernorm(norm):
        weight = getattr(norm, "weight", None)
        gain = weight.detach().float().cpu() if weight is not None else torch.ones(d_model)
        return NormScale(gain, True)
    param = next(norm.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    probe = torch.ones(1, d_model, device=device, dtype=dtype)
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 0.0)
    gain = norm(probe).float().cpu()[0] * (1.0 + eps) ** 0.5
    return NormScale(gain, False)


def read_directions(w_dec: Tensor, scale: NormScale) -> Tensor:
    """Unit decoder directions as the unembedding reads them: g ⊙ c(ŵ_i), [n, d_model] float32."""
    u = unit_rows(w_dec.float())
    if scale.center:
        u = u - u.mean(dim=1, keepdim=True)
    return u * scale.gain.to(u.device)


class LogitEffects(NamedTuple):
    """Per feature, the `n` tokens whose logits it raises most and lowers most."""

    top_tokens: Tensor
    """[d_sae, n] int64, largest effect first."""
    top_values: Tensor
    bottom_tokens: Tensor
    """[d_sae, n] int64, most negative first."""
    bottom_values: Tensor


@torch.inference_mode()
def logit_effects(w_dec: Tensor, w_u: Tensor, scale: NormScale, n: int = 10, chunk: int = 128) -> LogitEffects:
    """Top and bottom `n` tokens of W_U · (g ⊙ c(ŵ_i)) for every feature, `chunk` features at a time (many
    features against a float32 W_U on the CPU: screened in bfloat16, same tokens; `analysis.screen`)."""
    w_u = w_u.detach()
    n = min(n, w_u.shape[0])
    if worth_screening(len(w_dec), w_u):
        found = screened_extremes(read_directions(w_dec.to(w_u.device), scale), w_u, n)
        return LogitEffects(found.top_ids, found.top_values, found.bottom_ids, found.bottom_values)
    parts: list[tuple[Tensor, ...]] = []
    for s in range(0, len(w_dec), chunk):
        d = read_directions(w_dec[s:s + chunk].to(w_u.device), scale)
        found = full_extremes(d, w_u, n)
        parts.append(tuple(t.cpu() for t in found))
    if not parts:
        empty = torch.zeros(0, n)
        return LogitEffects(empty.long(), empty, empty.long(), empty)
    return LogitEffects(*(torch.cat(p) for p in zip(*parts, strict=True)))
