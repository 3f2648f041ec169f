"""ASGI middleware that guards the explorer: allowed Host names, a request-body size cap, security headers.

- Host check: a page on another site can make the browser send requests to 127.0.0.1 under its own
  host name (DNS rebinding); only the names the server is reached by are answered (400 otherwise).
- Body cap: requests with a body over `limit` bytes get 413 before any of it is parsed.
- Headers: a Content-Security-Policy that allows scripts from this server only (no inline scripts, so an
  injected `<script>` or `onerror=` would not run even if some text were ever inserted as HTML), nosniff,
  no framing, no referrer.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
           (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
           (b"cross-origin-opener-policy", b"same-origin")]


async def _reply(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *HEADERS]})
    await send({"type": "http.response.body", "body": body})


def host_name(header: str) -> str:
    """The host name of a Host header, without the port ("[::1]:8765" → "::1")."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class Guard:
    """The three guards of the module doc around `app`; `hosts` None or containing "*" allows any Host."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str] | None = LOCAL_HOSTS, limit: int = 64 * 1024) -> None:
        self.app = app
        self.hosts = None if hosts is None or "*" in hosts else {h.strip("[]").lower() for h in hosts}
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.hosts is not None and host_name(headers.get(b"host", b"").decode("latin-1")) not in self.hosts:
            await _reply(send, 400, "invalid Host header")
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _reply(send, 413, f"request body too large (at most {self.limit} bytes)")
            return
        await self.app(scope, _Capped(receive, self.limit), _WithHeaders(send))


class _Capped:
    """`receive` that stops a body (sent without Content-Length) growing past the limit."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.seen = receive, limit, 0

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise BodyTooLarge(self.limit)
        return message


class BodyTooLarge(HTTPException):
    """A request body without Content-Length grew past the limit (answered with 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body too large (at most {limit} bytes)")


class _WithHeaders:
    """`send` that adds the security headers to every response."""

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message["headers"] = [*message.get("headers", []), *(h for h in HEADERS if h[0] not in names)]
        await self.send(message)
