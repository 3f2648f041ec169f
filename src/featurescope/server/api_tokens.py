"""Per-token search: the features that fire most on one token of a text (the search page's token view)."""

from __future__ import annotations

from typing import Literal

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from featurescope.errors import FeaturescopeError
from featurescope.featuredb.records import best_label
from featurescope.server import limits
from featurescope.server.api_live import LIVE_ERRORS
from featurescope.server.api_store import explorer
from featurescope.server.context import finite

router = APIRouter(prefix="/api", tags=["live model"])


class TokenRequest(BaseModel):
    text: str = Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)
    position: int = Field(ge=0, description="the token, as an index into /api/search/text's `tokens`")
    n: int = Field(10, ge=1, le=limits.MAX_HITS)
    by: Literal["max", "relative"] = "relative"


class TokenHit(BaseModel):
    feature: int
    act: float = Field(description="the feature's activation on the token")
    relative: float = Field(description="act / the feature's max over the analysed corpus")
    label: str


class TokenResult(BaseModel):
    position: int
    token: str
    hits: list[TokenHit]


@router.post("/search/token", summary="The features that fire most on one token of a text", responses=LIVE_ERRORS)
def search_token(request: Request, body: TokenRequest) -> TokenResult:
    from featurescope.analysis.search import text_activations, text_ids, text_pieces

    ex = explorer(request)
    live = ex.require_live()
    model, sae = live.model, live.sae
    ids = text_ids(model, body.text)
    if body.position >= len(ids):
        raise FeaturescopeError(f"position {body.position} is past the text's {len(ids)} tokens")
    token = text_pieces(model, ids)().texts[body.position]  # "" for a later byte of a character shown before
    if ids[body.position] in model.special_ids:
        return TokenResult(position=body.position, token=token, hits=[])
    with live.lock:
        acts = text_activations(model, sae, int(ex.meta["layer"]), ids[: body.position + 1])[-1].cpu()
    corpus_max = ex.max_activations().float()
    relative = torch.where(corpus_max > 0, acts / corpus_max.clamp_min(1e-30), 0.0)
    order = (relative if body.by == "relative" else acts).clone()
    order[acts <= 0] = -1.0
    top = order.topk(min(body.n, len(order)))
    chosen = [int(f) for f, v in zip(top.indices, top.values, strict=True) if v >= 0]
    with ex.read() as s:
        labels = {f: best.text if (best := best_label(s.labels(f))) else "" for f in chosen}
    return TokenResult(position=body.position, token=token, hits=[
        TokenHit(feature=f, act=finite(acts[f]) or 0.0, relative=finite(relative[f]) or 0.0, label=labels[f])
        for f in chosen])


class ActivationsRequest(BaseModel):
    text: str = Field(min_length=1, max_length=limits.MAX_TEXT_CHARS)
    features: list[int] = Field(min_length=1, max_length=limits.MAX_HITS)


class FeatureActs(BaseModel):
    feature: int
    corpus_max: float = Field(description="the feature's max over the analysed corpus (0: it never fired)")
    acts: list[float] = Field(description="its activation on every token of the text")


class ActivationsResult(BaseModel):
    tokens: list[str]
    features: list[FeatureActs]


@router.post("/activations", summary="Chosen features' activations on every token of a text",
             responses=LIVE_ERRORS)
def activations(request: Request, body: ActivationsRequest) -> ActivationsResult:
    from featurescope.analysis.search import text_activations, text_ids, text_pieces

    ex = explorer(request)
    live = ex.require_live()
    features = [ex.check_id(f) for f in dict.fromkeys(body.features)]
    model, sae = live.model, live.sae
    ids = text_ids(model, body.text)
    with live.lock:
        acts = text_activations(model, sae, int(ex.meta["layer"]), ids)[:, features].cpu()
    corpus_max = ex.max_activations().float()
    merge = text_pieces(model, ids)  # as /api/search/text shows them: a character's tokens carry its max
    return ActivationsResult(tokens=merge().texts, features=[
        FeatureActs(feature=f, corpus_max=finite(corpus_max[f]) or 0.0,
                    acts=[finite(a) or 0.0 for a in merge(acts[:, j].tolist()).acts])
        for j, f in enumerate(features)])
