"""The feature database, SAE and model a probe command works on, loaded and checked together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.models import LanguageModel
from featurescope.sae import SAE


class Session(NamedTuple):
    """An open feature database with its SAE and model (on the same device) and the layer the SAE reads."""

    store: FeatureStore
    sae: SAE
    model: LanguageModel
    layer: int


def resolve_device(device: str) -> str:
    """cuda when available for `auto`, else the name given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_features(spec: str, d_sae: int) -> list[int]:
    """Feature ids from "12,40" (each checked against 0..d_sae-1; no repeats)."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            i = int(part)
        except ValueError:
            raise FeaturescopeError(f"feature ids are integers (got {part!r})") from None
        if not 0 <= i < d_sae:
            raise FeaturescopeError(f"feature {i} is out of range: the database has features 0..{d_sae - 1}")
        if i not in out:
            out.append(i)
    return out


@contextmanager
def open_session(db: str, *, sae: SAE | str | None = None, model: LanguageModel | str | None = None,
                 device: str = "auto") -> Iterator[Session]:
    """Open database `db` and load its SAE and model (those it records unless given), closed after the block."""
    from featurescope.analysis.search import load_for_store

    store = FeatureStore.open(db)
    try:
        loaded_sae, loaded_model = load_for_store(store, sae=sae or None, model=model or None,
                                                  device=resolve_device(device))
        yield Session(store, loaded_sae, loaded_model, int(store.meta["layer"]))
    finally:
        store.close()


def best_labels(store: FeatureStore, ids: list[int]) -> dict[int, str]:
    """The best label text of each feature ('' if none)."""
    from featurescope.featuredb.records import best_label

    out: dict[int, str] = {}
    for i in ids:
        label = best_label(store.labels(i))
        out[i] = label.text if label else ""
    return out


def require(condition: Any, message: str, *, settings: tuple[str, ...] = ()) -> None:
    """Raise FeaturescopeError(message, settings=settings) unless `condition`."""
    if not condition:
        raise FeaturescopeError(message, settings=settings)
