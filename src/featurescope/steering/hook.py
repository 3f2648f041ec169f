"""Steer a model by clamping or adding SAE features in the residual stream after block L, during generation.

With x the block's output at one position, f = sae.encode(x) computed once from that unedited x, and
d_i = W_dec[i] / input_scale the raw-unit decoder direction of feature i, the edit is

    clamp:        x' = x + Σ_i (c_i − f_i(x)) · d_i            (the paper: reconstruction with f_i := c_i,
                                                                 plus the SAE's error term x − x̂)
    add:          x' = x + Σ_i α_i · d_i                        (Neuronpedia / SAELens steering vectors)
    conditional:  x' = x + Σ_i 1[f_i(x) > 0] · (c_i − f_i(x)) · d_i   (clamp only where feature i fires)

Because decoding is linear in f, the clamp changes the SAE's code in feature i only; every other feature
keeps its value up to the SAE's own nonlinearity (TopK competition, non-orthogonal encoder rows).

The hook (`SteeringHook`) sits on block L's forward; it sees the prompt as [B, T, d] and, with a KV cache,
each generated token once as [B, 1, d] — cached positions are neither re-edited nor skipped. Positions
holding special tokens (BOS, EOS, padding: `model.special_ids`) keep the model's own activation by
default, as in harvesting and evaluation: the SAE never saw them and their norms are outliers. Token ids
reach the hook from a pre-hook on the input embedding; without it (inputs_embeds) every position is steered.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from featurescope.errors import FeaturescopeError
from featurescope.models import LanguageModel
from featurescope.sae import SAE
from featurescope.steering.values import (
    MaxActivations,
    open_feature_store,
    resolve_values,
    store_max_activations,
)

MODES = ("clamp", "add", "conditional")


class FeatureReader:
    """f_i(x) for a few features, equal to `sae.encode(x)[..., features]`.

    Where each feature depends on its own pre-activation only (`SAE.feature_thresholds`: ReLU, JumpReLU,
    BatchTopK) only the selected encoder rows are multiplied (cheap for wide SAEs); TopK needs every
    pre-activation to know whether feature i is among the k largest.
    """

    def __init__(self, sae: SAE, features: list[int]) -> None:
        self.sae = sae
        self.index = torch.tensor(features, dtype=torch.long, device=sae.W_dec.device)
        with torch.no_grad():
            threshold = sae.feature_thresholds(self.index)
            self.local = threshold is not None
            if threshold is not None:
                self.threshold = threshold
                self.rows = sae.W_enc_rows.detach()[self.index]
                self.bias = sae.b_enc.detach()[self.index]

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Raw activations [..., d_in] → the selected features' activations [..., n] (SAE dtype)."""
        if not self.local:
            return self.sae.encode(x).index_select(-1, self.index)
        sae = self.sae
        xn = sae.normalize(x.to(self.rows.dtype))
        if sae.cfg.apply_b_dec_to_input:
            xn = xn - sae.b_dec.detach()
        pre = xn @ self.rows.T + self.bias
        return pre * (pre > self.threshold)


def feature_directions(sae: SAE, features: list[int]) -> Tensor:
    """Raw-unit decoder directions d_i = W_dec[i] / input_scale, [n, d_in]: f_i += δ moves decode(f) by δ·d_i."""
    with torch.no_grad():
        index = torch.tensor(features, dtype=torch.long, device=sae.W_dec.device)
        return sae.denormalize(sae.W_dec.detach()[index])


class TokenIds:
    """Forward pre-hook on the input embedding: keeps the token ids of the forward pass in progress."""

    def __init__(self) -> None:
        self.ids: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = args[0] if args else next(iter(kwargs.values()), None)
        self.ids = ids if isinstance(ids, Tensor) and not ids.is_floating_point() else None

    def take(self) -> Tensor | None:
        """The ids recorded since the last call (None if none), cleared so a stale value is never reused."""
        ids, self.ids = self.ids, None
        return ids


class SteeringHook:
    """Edit of block L's output h [B, T, d] → h' (see the module doc); counts what it edited.

    `values` [n] are the c_i (clamp, conditional) or α_i (add) of `features`; `special` holds the token ids
    whose positions stay unedited (None: edit every position).
    """

    def __init__(self, sae: SAE, values: Mapping[int, float], mode: str = "clamp",
                 special: set[int] | None = None) -> None:
        if mode not in MODES:
            raise FeaturescopeError(f"unknown steering mode {mode!r}; choose one of {', '.join(MODES)}")
        self.features = list(values)
        self.mode = mode
        self.reader = FeatureReader(sae, self.features)
        self.directions = feature_directions(sae, self.features)
        self.values = torch.tensor([values[i] for i in self.features], dtype=self.directions.dtype,
                                   device=self.directions.device)
        self.special = (torch.tensor(sorted(special), dtype=torch.long, device=self.directions.device)
                        if special else None)
        self.tokens = TokenIds()
        self.calls = 0
        """Forward passes through block L so far."""
        self._edited = torch.zeros((), dtype=torch.long, device=self.directions.device)

    @property
    def positions(self) -> int:
        """Positions edited so far (special positions left out)."""
        return int(self._edited)

    def mask(self, h: Tensor) -> Tensor | None:
        """Bool [B, T]: positions to edit (None: all of them)."""
        ids = self.tokens.take()
        if self.special is None or ids is None or tuple(ids.shape) != tuple(h.shape[:2]):
            return None
        return ~torch.isin(ids.to(self.special.device), self.special)

    def delta(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """The edit x' − x for raw activations x [B, T, d] (SAE dtype)."""
        if self.mode == "add":
            coef = self.values.expand(*x.shape[:-1], len(self.features))
        else:
            f = self.reader(x)
            coef = self.values - f
            if self.mode == "conditional":
                coef = coef * (f > 0)
        if mask is not None:
            coef = coef * mask.unsqueeze(-1).to(coef.device, coef.dtype)
        return coef @ self.directions

    def __call__(self, h: Tensor) -> Tensor:
        mask = self.mask(h)
        self.calls += 1
        self._edited += mask.sum() if mask is not None else h.shape[0] * h.shape[1]  # no device sync
        x = h.to(self.directions.dtype)
        return (x + self.delta(x, mask)).to(h.dtype)


def check_compatible(model: LanguageModel, sae: SAE, layer: int | None = None) -> int:
    """The layer to steer at, after checking that `sae` reads `model`'s residual stream there."""
    if sae.cfg.d_in != model.d_model:
        raise FeaturescopeError(f"the SAE reads d_in={sae.cfg.d_in} but {model.name} has d_model={model.d_model}")
    if layer is None:
        layer = sae.cfg.layer
        if layer is None:
            raise FeaturescopeError("the SAE does not record its layer: give the layer to steer at")
    elif sae.cfg.layer is not None and layer != sae.cfg.layer:
        raise FeaturescopeError(f"the SAE reads layer {sae.cfg.layer}, not layer {layer}")
    return model.check_layer(layer)


def load_max_acts(source: MaxActivations | str | Any | None, sae: SAE) -> MaxActivations | None:
    """Max activations from a tensor, a dict, a database path or an open `FeatureStore` (None stays None)."""
    if source is None or isinstance(source, (Tensor, Mapping)):
        return source
    if isinstance(source, (str, os.PathLike)):
        with open_feature_store(os.fspath(source)) as store:
            return store_max_activations(store, d_sae=sae.cfg.d_sae, layer=sae.cfg.layer)
    if not hasattr(source, "max_activations"):
        raise FeaturescopeError(f"cannot read max activations from {type(source).__name__}")
    return store_max_activations(source, d_sae=sae.cfg.d_sae, layer=sae.cfg.layer)


def make_hook(model: LanguageModel, sae: SAE, features: Mapping[int, Any], *, mode: str = "clamp",
              max_acts: MaxActivations | str | Any | None = None, layer: int | None = None,
              skip_special: bool = True) -> tuple[SteeringHook, int]:
    """Validate everything, move `sae` to the model's device, and build the hook and its layer."""
    if mode not in MODES:
        raise FeaturescopeError(f"unknown steering mode {mode!r}; choose one of {', '.join(MODES)}")
    layer = check_compatible(model, sae, layer)
    values = resolve_values(features, sae.cfg.d_sae, load_max_acts(max_acts, sae))
    sae.to(model.device)
    return SteeringHook(sae, values, mode, model.special_ids if skip_special else None), layer


@contextmanager
def attach(model: LanguageModel, hook: SteeringHook, layer: int) -> Iterator[SteeringHook]:
    """Register `hook` on block `layer` (and its token-id recorder on the input embedding) for the block."""
    with ExitStack() as stack:
        embedding = model.hf.get_input_embeddings()
        if hook.special is not None and embedding is not None:
            handle = embedding.register_forward_pre_hook(hook.tokens, with_kwargs=True)
            stack.callback(handle.remove)
        stack.enter_context(model.splice(layer, hook))
        yield hook


@contextmanager
def steer(model: LanguageModel, sae: SAE, features: Mapping[int, Any], *, mode: str = "clamp",
          max_acts: MaxActivations | str | Any | None = None, layer: int | None = None,
          skip_special: bool = True) -> Iterator[SteeringHook]:
    """Within the block, every forward pass of `model` (prompt and each generated token) is steered.

    `features` maps feature ids to values: a number (absolute c, or α in add mode) or a string such as
    "5x" / "-2x" (a multiple of the feature's max activation, from `max_acts`: a tensor [d_sae], a dict,
    a feature-database path or an open `FeatureStore`). `mode` is clamp, add or conditional; `layer` defaults
    to the SAE's. Special-token positions are left alone unless `skip_special=False`.

        with featurescope.steer(model, sae, {123: "5x"}, max_acts="features.db"):
            model.hf.generate(...)
    """
    hook, layer = make_hook(model, sae, features, mode=mode, max_acts=max_acts, layer=layer,
                            skip_special=skip_special)
    with attach(model, hook, layer):
        yield hook
