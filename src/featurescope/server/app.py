"""The explorer's FastAPI application: JSON API (documented at /openapi.json and /docs) and the pages."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from featurescope._version import __version__
from featurescope.errors import FeaturescopeError
from featurescope.server import (
    api_compare,
    api_images,
    api_list,
    api_live,
    api_probes,
    api_store,
    api_stream,
    api_tokens,
    error_pages,
    generation,
    limits,
    pages,
)
from featurescope.server.context import Explorer, NotFound, NotLoaded, Unavailable
from featurescope.server.security import LOCAL_HOSTS, Guard

DESCRIPTION = """The featurescope explorer's API over one feature database (read-only), and over the model
and SAE when they are loaded (live text search, steering, CE loss recovered). Feature ids out of range
answer 404; inputs over the limits in `/api/info` answer 4xx."""


def _status(error: FeaturescopeError) -> int:
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, NotLoaded):
        return 409
    if isinstance(error, Unavailable | generation.Busy):
        return 503
    return 400


async def _featurescope_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, FeaturescopeError)
    return error_pages.respond(request, _status(error), str(error))


async def _invalid_request(request: Request, error: Exception) -> Response:
    """A page: the friendly error page (400). The API: 422 without echoing the input (a lone surrogate or NaN
    in it cannot be written as JSON; was a 500)."""
    assert isinstance(error, RequestValidationError)
    if error_pages.wants_page(request):
        return error_pages.page(400, error_pages.validation_message(error))
    detail = [{"type": e.get("type"), "loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg"))}
              for e in error.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


async def _damaged_database(request: Request, error: Exception) -> Response:
    return error_pages.respond(request, 503, "the feature database is damaged; rebuild it "
                               "(featurescope analyze --overwrite)")


def create_app(db_path: str | Path, sae: Any = None, model: Any = None, *,
               allowed_hosts: Iterable[str] | None = LOCAL_HOSTS, device: str = "cpu",
               eval_path: str | Path | None = None) -> FastAPI:
    """The explorer of feature database `db_path`; with `sae` and/or `model` (objects, or a path and a model
    name; the other defaults to the one the database records) live search and steering are on. `eval_path`:
    a `featurescope eval --json` output whose CE loss recovered the overview shows.

    Requests must name one of `allowed_hosts` in their Host header (None or "*": any); see `security.Guard`.
    """
    ex = Explorer(db_path, sae=sae, model=model, device=device, eval_path=eval_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        ex.close()

    app = FastAPI(title="featurescope explorer", version=__version__, description=DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json", lifespan=lifespan)
    app.state.explorer = ex
    app.add_exception_handler(FeaturescopeError, _featurescope_error)
    error_pages.install(app)
    app.add_exception_handler(sqlite3.DatabaseError, _damaged_database)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(api_store.router)
    app.include_router(api_list.router)
    app.include_router(api_images.router)
    app.include_router(api_live.router)
    app.include_router(api_stream.router)
    app.include_router(api_tokens.router)
    app.include_router(api_probes.router)
    app.include_router(api_compare.router)
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    app.add_middleware(Guard, hosts=allowed_hosts, limit=limits.MAX_BODY_BYTES)
    return app
