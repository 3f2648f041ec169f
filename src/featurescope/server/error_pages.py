"""Friendly errors for the pages: any failed request outside /api (unknown page, malformed or unknown id)
answers a styled HTML page with the right status; /api and /openapi.json keep their JSON errors."""

from __future__ import annotations

import html
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{status} {reason} · featurescope</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/css/app.css">
<script type="module" src="/static/js/error.js"></script>
</head>
<body>
<main id="main" data-status="{status}">
<h1>{status} · {reason}</h1>
<div class="error" role="alert">{message}</div>
<p>Try the <a href="/overview">overview</a>, the <a href="/features">list of features</a> or
<a href="/search">search</a>.</p>
</main>
</body>
</html>
"""


def wants_page(request: Request) -> bool:
    """Whether the request is for a page (not the API, its document or a static file)."""
    path = request.url.path
    return not (path.startswith(("/api/", "/static/")) or path in ("/api", "/openapi.json"))


def page(status: int, message: str) -> HTMLResponse:
    """The error page: `message` (escaped) under the status and its reason."""
    reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = TEMPLATE.format(status=status, reason=html.escape(reason), message=html.escape(message))
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-cache"})


def respond(request: Request, status: int, message: str) -> Response:
    """The error page for a page request, else the API's JSON `{"detail": message}`."""
    return page(status, message) if wants_page(request) else JSONResponse({"detail": message}, status_code=status)


def validation_message(error: RequestValidationError) -> str:
    parts = []
    for e in error.errors():
        where = ".".join(str(x) for x in e.get("loc", ())[1:]) or "request"
        value = e.get("input")
        shown = f" {str(value)[:60]!r}" if isinstance(value, str | int | float) else ""
        parts.append(f"{where}{shown}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "malformed request"


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if not wants_page(request):
        return await http_exception_handler(request, error)
    message = "There is no such page." if error.status_code == 404 else str(error.detail)
    return page(error.status_code, message)


def install(app: FastAPI) -> None:
    """Register the page-aware handler of HTTP errors (the app's own handlers call `respond` and `page`)."""
    app.add_exception_handler(HTTPException, _http_error)
