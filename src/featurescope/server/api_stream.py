"""Streamed steering: a baseline and one or more steered continuations (a sweep), token by token, cancellable.

`POST /api/steer/stream` checks the request (4xx/409/503 as JSON), then answers 200 with newline-delimited
JSON events as the worker thread (`generation.Job`) produces them:

- `{"event": "start", "job": id, "prompt": text, "columns": [{"title", "values"}...]}` (column 0: baseline)
- `{"event": "token", "column": i, "text": new text}` (`"replace": true`: the column's whole text so far)
- `{"event": "column", "column": i, "tokens": n}` once column i is complete
- `{"event": "done", "cancelled": bool}` or `{"event": "error", "detail": text}`, last

`POST /api/steer/jobs/{job}/cancel` stops it at its next token; so does closing the connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from featurescope.server import generation, schemas
from featurescope.server.api_live import LIVE_ERRORS, _auto_choices, _steer_values, _with_auto
from featurescope.server.api_store import explorer
from featurescope.server.context import NotFound, finite

router = APIRouter(prefix="/api", tags=["live model"])


def jobs(request: Request) -> generation.Jobs:
    """The app's running generations (made on first use)."""
    state = request.app.state
    if not hasattr(state, "generations"):
        state.generations = generation.Jobs()
    return state.generations


def _columns(values: list[dict[int, Any]], auto: dict[int, Any], body: schemas.StreamSteerRequest, live: Any,
             max_acts: Any) -> tuple[list[generation.Column], int]:
    """The baseline and one column per run of features (`values`, each checked); `auto` values steered at their
    chosen multiple."""
    from featurescope.steering.hook import make_hook

    columns = [generation.Column("baseline", None, {}, {})]
    layer = int(live.sae.cfg.layer) if live.sae.cfg.layer is not None else -1
    for run, given in zip(body.columns, values, strict=True):
        chosen = _with_auto(given, {i: auto[i] for i, v in given.items() if v.auto})
        hook, layer = make_hook(live.model, live.sae, chosen, mode=body.mode, max_acts=max_acts)
        absolute = {i: finite(v) or 0.0 for i, v in zip(hook.features, hook.values.tolist(), strict=True)}
        title = ", ".join(f"#{f.feature} {f.value}" + (f" (= {chosen[f.feature]})" if given[f.feature].auto else "")
                          for f in run)
        why = {i: {"multiple": auto[i].multiple, "reason": auto[i].reason} for i, v in given.items() if v.auto}
        columns.append(generation.Column(title, hook, absolute, why))
    return columns, layer


async def _events(job: generation.Job) -> AsyncIterator[str]:
    try:
        yield json.dumps({"event": "start", "job": job.id, "prompt": job.prompt,
                          "columns": [{"title": c.title, "values": c.values, "auto": c.auto}
                                                  for c in job.columns]}) + "\n"
        while True:
            event = await anyio.to_thread.run_sync(job.next_event, 0.25)
            if event is None:
                continue
            yield json.dumps(event) + "\n"
            if event["event"] in ("done", "error"):
                break
    finally:  # the client went away (or the stream ended): stop the model work
        job.cancel()


@router.post("/steer/stream", summary="Stream a baseline and steered continuations token by token (NDJSON)",
             responses={**LIVE_ERRORS, 503: {"description": "too many generations are running"}})
async def steer_stream(request: Request, body: schemas.StreamSteerRequest) -> StreamingResponse:
    from featurescope.steering.generate import encode_prompt, generation_kwargs

    ex = explorer(request)
    live = ex.require_live()
    model = live.model
    values = [_steer_values(request, run) for run in body.columns]
    max_acts = ex.max_activations()
    wanted = {i: v for run in values for i, v in run.items() if v.auto}
    auto: dict[int, Any] = {}
    if wanted:  # calibrating needs the model: wait for it in the live queue, as the one-shot routes do
        def calibrate() -> dict[int, Any]:
            with live.lock:
                return _auto_choices(live, wanted, max_acts, body.mode)
        auto = await live.queue.run(calibrate)
    columns, layer = _columns(values, auto, body, live, max_acts)
    ids, text = encode_prompt(model, body.prompt, chat=body.chat)
    kwargs = generation_kwargs(model, max_new_tokens=body.max_new_tokens, temperature=body.temperature)
    job = jobs(request).start(lambda js: generation.Job(js, model, live.lock, ids, text, columns, kwargs,
                                                        body.seed, layer))
    return StreamingResponse(_events(job), media_type="application/x-ndjson",
                             headers={"cache-control": "no-store", "x-job": job.id})


@router.post("/steer/jobs/{job_id}/cancel", summary="Stop a streamed generation at its next token")
def cancel(request: Request, job_id: str) -> dict[str, Any]:
    job = jobs(request).get(job_id)
    if job is None:
        raise NotFound(f"no running generation {job_id!r} (finished already?)")
    job.cancel()
    return {"job": job_id, "cancelled": True}
