"""Per-token search: the features that fire most on one token of a text (the search page's token view)."""

from __future__ import annotations

from typing import Literal

import torch
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from featurescope.errors import FeaturescopeError
from featurescope.server import limits
from featurescope.server.api_live import LIVE_ERRORS
from featurescope.server.api_store import explorer
from featurescope.server.context import finite
from featurescope.store import best_label

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
    from featurescope.analysis.search import MAX_TOKENS

    ex = explorer(request)
    live = ex.require_live()
    model, sae = live.model, live.sae
    ids = model.tokenizer(body.text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    if model.bos_id is not None:
        ids = [model.bos_id, *ids]
    if body.position >= len(ids):
        raise FeaturescopeError(f"position {body.position} is past the text's {len(ids)} tokens")
    token = model.tokenizer.decode([ids[body.position]])
    if ids[body.position] in model.special_ids:
        return TokenResult(position=body.position, token=token, hits=[])
    with live.lock, torch.inference_mode():
        resid = model.residual(torch.tensor([ids[: body.position + 1]]), int(ex.meta["layer"]))[0, -1]
        acts = sae.encode(resid[None].float()).float()[0].cpu()
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
    from featurescope.analysis.search import MAX_TOKENS

    ex = explorer(request)
    live = ex.require_live()
    features = [ex.check_id(f) for f in dict.fromkeys(body.features)]
    model, sae = live.model, live.sae
    ids = model.tokenizer(body.text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
    if model.bos_id is not None:
        ids = [model.bos_id, *ids]
    keep = torch.tensor([i not in model.special_ids for i in ids])
    with live.lock, torch.inference_mode():
        resid = model.residual(torch.tensor([ids]), int(ex.meta["layer"]))[0]
        acts = torch.zeros(len(ids), len(features))
        if bool(keep.any()):
            acts[keep] = sae.encode(resid[keep.to(resid.device)].float()).float()[:, features].cpu()
    corpus_max = ex.max_activations().float()
    return ActivationsResult(tokens=model.tokenizer.batch_decode([[i] for i in ids]), features=[
        FeatureActs(feature=f, corpus_max=finite(corpus_max[f]) or 0.0, acts=[finite(a) or 0.0 for a in acts[:, j]])
        for j, f in enumerate(features)])
