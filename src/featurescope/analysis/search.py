"""Which features fire on a text: run it through the model and the SAE of a feature database."""

from __future__ import annotations

from typing import NamedTuple

import torch

from featurescope.errors import FeaturescopeError
from featurescope.featuredb.core import FeatureStore
from featurescope.featuredb.records import best_label
from featurescope.models import LanguageModel, load_model
from featurescope.sae import SAE
from featurescope.tokentext import Merger, token_bytes

MAX_TOKENS = 2048
ORDERS = ("max", "relative")


class FeatureHit(NamedTuple):
    """A feature firing on the text: its activation on every token."""

    feature: int
    max: float
    relative: float
    """max / the feature's max over the analysed corpus (0 if it never fired there)."""
    label: str
    acts: list[float]
    """Activation on each token (the tokens of one character carry the max of theirs)."""


class TextSearch(NamedTuple):
    """The text's tokens and the features that fire most on it, strongest first."""

    token_ids: list[int]
    tokens: list[str]
    """Each token's text, byte tokens merged into characters ("" where an earlier token shows the character)."""
    hits: list[FeatureHit]


def load_for_store(store: FeatureStore, *, sae: SAE | str | None = None, model: LanguageModel | str | None = None,
                   device: str = "cpu") -> tuple[SAE, LanguageModel]:
    """The SAE and model a database was made with (paths from its meta unless given), checked against it."""
    if not isinstance(sae, SAE):
        path = sae or store.meta.get("sae")
        if not path:
            raise FeaturescopeError(f"{store.path} does not record its SAE; pass `sae`", settings=("sae",))
        sae = SAE.load(path, device=device)
    if sae.d_sae != store.d_sae or sae.d_in != int(store.meta["d_in"]):
        raise FeaturescopeError(f"the SAE has d_in={sae.d_in}, d_sae={sae.d_sae} but {store.path.name} was made with "
                                f"d_in={store.meta['d_in']}, d_sae={store.d_sae}")
    if not isinstance(model, LanguageModel):
        model = load_model(model or store.meta["model"], device=device)
    if model.d_model != sae.d_in:
        raise FeaturescopeError(f"{model.name} has d_model={model.d_model} but the SAE reads d_in={sae.d_in}")
    model.check_layer(int(store.meta["layer"]))
    return sae.to(device).eval(), model


@torch.inference_mode()
def text_ids(model: LanguageModel, text: str) -> list[int]:
    """The token ids a text search reads: BOS (if the model has one), then at most MAX_TOKENS of `text`."""
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    return [model.bos_id, *ids] if model.bos_id is not None else list(ids)


@torch.inference_mode()
def text_activations(model: LanguageModel, sae: SAE, layer: int, ids: list[int]) -> torch.Tensor:
    """Feature activations [len(ids), d_sae] on every token (zero at special tokens, which the SAE never read)."""
    tokens = torch.tensor([ids])
    resid = model.residual(tokens, layer)[0]
    keep = ~torch.isin(tokens[0], torch.tensor(sorted(model.special_ids) or [-1])).to(resid.device)
    acts = torch.zeros(len(ids), sae.d_sae, device=resid.device)
    if bool(keep.any()):
        acts[keep] = sae.encode(resid[keep].float()).float()
    return acts


def text_pieces(model: LanguageModel, ids: list[int]) -> Merger:
    """The merger that shows `ids` as text, byte tokens merged into characters."""
    raw = token_bytes(model.tokenizer, sorted(set(ids)))
    return Merger([raw[i] for i in ids])


def search_text(store: FeatureStore, text: str, *, sae: SAE | str | None = None,
                model: LanguageModel | str | None = None, n: int = 10, by: str = "max",
                device: str = "cpu") -> TextSearch:
    """The `n` features with the highest activation (`by="max"`) or the highest activation relative to their
    corpus max (`by="relative"`) on any token of `text`, with their activation on every token."""
    if not text or not text.strip():
        raise FeaturescopeError("empty search text")
    if by not in ORDERS:
        raise FeaturescopeError(f"cannot order by {by!r}; choose one of {', '.join(ORDERS)}")
    if n <= 0:
        raise FeaturescopeError(f"n must be positive (got {n})")
    sae, model = load_for_store(store, sae=sae, model=model, device=device)
    ids = text_ids(model, text)
    acts = text_activations(model, sae, int(store.meta["layer"]), ids)
    peak = acts.max(dim=0).values.cpu()
    corpus_max = store.max_activations()
    relative = torch.where(corpus_max > 0, peak / corpus_max.clamp_min(1e-30), 0.0)
    order = (peak if by == "max" else relative).clone()
    order[peak <= 0] = -1.0
    top = order.topk(min(n, sae.d_sae))
    chosen = [int(f) for f, v in zip(top.indices, top.values, strict=True) if v >= 0]
    labels = {f: best.text if (best := best_label(store.labels(f))) else "" for f in chosen}
    merge = text_pieces(model, ids)
    hits = [FeatureHit(f, float(peak[f]), float(relative[f]), labels[f], merge(acts[:, f].cpu().tolist()).acts)
            for f in chosen]
    return TextSearch(ids, merge().texts, hits)
