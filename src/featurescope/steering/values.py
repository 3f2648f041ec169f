"""Steering values: parse "5x" / "-2x" / "0" / "12.5" and resolve multiples against the features' max activations.

A value ending in `x` (or `×`) is a multiple of the feature's maximum activation over the corpus, read from the
feature database (`featurescope.featuredb.core`) or given directly; any other number is an absolute activation. 0 is
ablation in clamp mode. Values are in the SAE's feature units (what `sae.encode` returns). `auto` stands for
the feature's calibrated multiple (`steering.calibrate`), which the caller resolves before steering.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from featurescope.errors import FeaturescopeError

_MULTIPLE = re.compile(r"^\s*(.+?)\s*[x×X]\s*$")

MaxActivations = Tensor | Mapping[int, float]
"""Max activation per feature: a tensor [d_sae] or a dict {feature: max}."""


class SteerValue(NamedTuple):
    """A steering value as given: `amount` × the feature's max activation if `multiple`, else absolute;
    `auto`: the calibrated multiple, still to be chosen (`amount` is then NaN)."""

    amount: float
    multiple: bool
    auto: bool = False

    def __str__(self) -> str:
        if self.auto:
            return "auto"
        return f"{self.amount:g}x" if self.multiple else f"{self.amount:g}"


AUTO = SteerValue(math.nan, True, True)


def _number(text: str, original: object) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FeaturescopeError(
            f"bad steering value {original!r}: use a number (12.5, 0), a multiple of the max activation (5x, -2x) "
            "or auto"
        ) from None
    if not math.isfinite(value):
        raise FeaturescopeError(f"bad steering value {original!r}: must be finite")
    return value


def parse_value(value: str | float | SteerValue) -> SteerValue:
    """"5x" → 5 × max activation; "-2x" → −2 × max; "0" or 0 → ablation; "12.5" or 12.5 → absolute;
    "auto" → `AUTO`."""
    if isinstance(value, SteerValue):
        return value
    if isinstance(value, str) and value.strip().lower() == "auto":
        return AUTO
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise FeaturescopeError(f"bad steering value {value!r}: expected a number or a string such as '5x'")
    if isinstance(value, (int, float)):
        return SteerValue(_number(str(value), value), False)
    match = _MULTIPLE.match(value)
    if match:
        return SteerValue(_number(match.group(1), value), True)
    return SteerValue(_number(value.strip(), value), False)


def parse_values(text: str) -> list[SteerValue]:
    """A comma-separated list, e.g. "-2x,0,5x,10x" (a bare number in a sweep is read as a multiple)."""
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise FeaturescopeError("no steering values given")
    out = []
    for part in parts:
        v = parse_value(part)
        if v.auto:
            raise FeaturescopeError("auto is not a multiple: give numbers such as 1,2,5")
        out.append(v if v.multiple else SteerValue(v.amount, True))
    return out


def check_feature(feature: object, d_sae: int) -> int:
    """`feature` as an int in 0..d_sae-1, else a clear error."""
    if isinstance(feature, bool) or not isinstance(feature, int):
        raise FeaturescopeError(f"feature ids are integers (got {feature!r})")
    if not 0 <= feature < d_sae:
        raise FeaturescopeError(f"feature {feature} is out of range: the SAE has features 0..{d_sae - 1}")
    return feature


def max_activation(max_acts: MaxActivations | None, feature: int) -> float | None:
    """The max activation of `feature` from a tensor or dict, or None if unknown."""
    if max_acts is None:
        return None
    if isinstance(max_acts, Tensor):
        if max_acts.ndim != 1 or not 0 <= feature < max_acts.shape[0]:
            raise FeaturescopeError(
                f"max activations have shape {tuple(max_acts.shape)}; feature {feature} is not in them"
            )
        return float(max_acts[feature])
    value = max_acts.get(feature)
    return None if value is None else float(value)


def resolve_values(features: Mapping[int, Any], d_sae: int, max_acts: MaxActivations | None = None
                   ) -> dict[int, float]:
    """{feature: value as given} → {feature: absolute value c}, resolving multiples against `max_acts`."""
    if not features:
        raise FeaturescopeError("no features to steer")
    out: dict[int, float] = {}
    for feature, raw in features.items():
        i = check_feature(feature, d_sae)
        value = parse_value(raw)
        if value.auto:
            raise FeaturescopeError(f"feature {i}: resolve the value auto first (featurescope.steering.auto."
                                    "auto_value; the CLI and the explorer do it)")
        if not value.multiple:
            out[i] = value.amount
            continue
        top = max_activation(max_acts, i)
        if top is None:
            raise FeaturescopeError(
                f"{value} for feature {i} is a multiple of its max activation, which is unknown: "
                "give the feature database (`db` / max_acts=) or an absolute value", settings=("db",))
        if not math.isfinite(top) or top <= 0:
            raise FeaturescopeError(
                f"feature {i} never fired in the database (max activation {top:g}): give an absolute value"
            )
        out[i] = value.amount * top
    return out


def open_feature_store(db: str | Path) -> Any:
    """Open the feature database at `db` (`featurescope.featuredb.core.FeatureStore`)."""
    from featurescope.featuredb.core import FeatureStore

    return FeatureStore.open(db)


def store_max_activations(store: Any, *, d_sae: int, layer: int | None) -> Tensor:
    """The database's max activation per feature [d_sae], after checking it belongs to an SAE of this shape."""
    meta = store.meta
    if int(meta.get("d_sae", d_sae)) != d_sae:
        raise FeaturescopeError(
            f"the feature database is of an SAE with {meta['d_sae']} features; this one has {d_sae}"
        )
    db_layer = meta.get("layer")
    if db_layer is not None and layer is not None and int(db_layer) != layer:
        raise FeaturescopeError(f"the feature database is from layer {db_layer} but the SAE reads layer {layer}")
    acts = torch.as_tensor(store.max_activations(), dtype=torch.float32).flatten()
    if acts.shape[0] != d_sae:
        raise FeaturescopeError(f"the feature database has {acts.shape[0]} max activations, the SAE {d_sae} features")
    return acts


def store_top_tokens(store: Any, feature: int, k: int) -> list[int]:
    """Ids of the feature's top-k positive logit-effect tokens as the database records them ([] if none)."""
    return [int(e.token) for e in store.feature(feature).positive_logits][:k]
