"""The live API, when the explorer was started with a model and SAE: text search, steering, CE loss recovered.

Each request holds the model's lock for its duration (steering hooks must not see another request's
forward passes); requests wait for their turn in `limits.LiveQueue` (503 when it is full), not in a worker
thread. With no model loaded every route answers 409.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Request

from featurescope.errors import FeaturescopeError
from featurescope.server import limits, schemas
from featurescope.server.api_store import explorer
from featurescope.server.context import finite

router = APIRouter(prefix="/api", tags=["live model"])
LIVE_ERRORS: dict[int | str, dict[str, Any]] = {409: {"description": "no model and SAE are loaded"}}


def _acts(values: list[float]) -> list[float]:
    return [v if math.isfinite(v) else 0.0 for v in values]


@router.post("/search/text", summary="Run a text through the model and SAE: the features that fire on it",
             responses=LIVE_ERRORS)
async def search_text(request: Request, body: schemas.TextSearchRequest) -> schemas.TextSearchResult:
    from featurescope.analysis.search import search_text as run

    live = explorer(request).require_live()

    def work() -> Any:
        with live.lock:
            return run(live.store, body.text, sae=live.sae, model=live.model, n=body.n, by=body.by,
                       device=str(live.model.device))
    result = await live.queue.run(work)
    hits = [schemas.Hit(feature=h.feature, max=finite(h.max) or 0.0, relative=finite(h.relative) or 0.0,
                        label=h.label, acts=_acts(h.acts)) for h in result.hits]
    return schemas.TextSearchResult(tokens=result.tokens, token_ids=result.token_ids, hits=hits)


def _steer_values(request: Request, features: list[schemas.SteerFeature]) -> dict[int, Any]:
    from featurescope.steering.values import parse_value

    ex = explorer(request)
    values: dict[int, Any] = {}
    for item in features:
        ex.check_id(item.feature)
        if item.feature in values:
            raise FeaturescopeError(f"feature {item.feature} is given twice")
        value = parse_value(item.value)
        if not value.auto and abs(value.amount) > limits.MAX_ABS_STEER:
            raise FeaturescopeError(f"steering value {value} is too large (at most {limits.MAX_ABS_STEER:g})")
        values[item.feature] = value
    return values


@router.post("/steer", summary="Generate a baseline and a steered continuation of a prompt, side by side",
             responses=LIVE_ERRORS)
async def steer(request: Request, body: schemas.SteerRequest) -> schemas.SteerResult:
    from featurescope.steering.generate import generate

    ex = explorer(request)
    live = ex.require_live()
    values = _steer_values(request, body.features)
    max_acts = ex.max_activations()

    def work() -> Any:
        with live.lock:
            auto = _auto_choices(live, values, max_acts, body.mode)
            out = generate(live.model, live.sae, body.prompt, _with_auto(values, auto), mode=body.mode,
                           max_acts=max_acts, max_new_tokens=body.max_new_tokens, seed=body.seed, chat=body.chat,
                           temperature=body.temperature)
            return out, auto
    out, auto = await live.queue.run(work)
    return schemas.SteerResult(prompt=out.prompt, baseline=out.baseline, steered=out.steered,
                               values={k: finite(v) or 0.0 for k, v in out.values.items()},
                               auto={i: schemas.AutoChoice(multiple=c.multiple, reason=c.reason)
                                     for i, c in auto.items()})


def _auto_choices(live: Any, values: dict[int, Any], max_acts: Any, mode: str) -> dict[int, Any]:
    """The calibrated choice (steering.auto) of each feature of `values` given `auto`; call it holding the model
    lock. Kept in memory, read from the database's cache if `featurescope steer` stored it there, else computed
    (the explorer never writes its database)."""
    from featurescope.steering.auto import auto_value
    from featurescope.steering.calibrate import CalibrationConfig

    chosen = {}
    for i in (i for i, v in values.items() if v.auto):
        if (i, mode) not in live.auto:
            live.auto[i, mode] = auto_value(live.model, live.sae, i, float(max_acts[i]), con=live.store.con,
                                            cfg=CalibrationConfig(mode=mode))
        chosen[i] = live.auto[i, mode]
    return chosen


def _with_auto(values: dict[int, Any], auto: dict[int, Any]) -> dict[int, Any]:
    """`values` with each feature given `auto` steered at its chosen multiple."""
    return {**values, **{i: f"{c.multiple:g}x" for i, c in auto.items()}}


def _ce_corpus(meta: dict[str, object]) -> str:
    """The database's corpus if it can still be opened here (a built-in name or an existing file), else wiki-en."""
    corpus = meta.get("corpus")
    if isinstance(corpus, str) and corpus and (corpus.startswith(("wiki-", "bible-")) or Path(corpus).exists()):
        return corpus
    return "wiki-en"


@router.post("/quality/ce", summary="Measure CE loss recovered with the SAE spliced into the model",
             responses=LIVE_ERRORS)
async def measure_ce(request: Request, body: schemas.CERequest) -> schemas.CEResult:
    from featurescope.corpus import contexts, open_corpus
    from featurescope.evaluate import ce_metrics

    ex = explorer(request)
    live = ex.require_live()
    corpus = _ce_corpus(ex.meta)

    def work() -> Any:
        with live.lock:
            model = live.model
            stream = contexts(open_corpus(corpus, seed=1), model.tokenizer,
                              ctx_len=int(ex.meta.get("ctx_len") or 128), bos_id=model.bos_id)
            ids = torch.tensor(list(itertools.islice(stream, body.contexts)))
            if len(ids) == 0:
                raise FeaturescopeError(f"{corpus}: no contexts to measure CE loss on")
            m = ce_metrics(model, live.sae.to(model.device), int(ex.meta["layer"]), ids)
            live.ce = {**m._asdict(), "corpus": corpus}
            return m
    m = await live.queue.run(work)
    return schemas.CEResult(ce_clean=finite(m.ce_clean), ce_spliced=finite(m.ce_spliced),
                            ce_zero=finite(m.ce_zero), loss_recovered=finite(m.loss_recovered),
                            tokens=m.tokens, corpus=corpus)
