"""Run the explorer with uvicorn: in the foreground until Ctrl-C (`serve`), or in a thread (`ServerThread`)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from featurescope.errors import FeaturescopeError
from featurescope.server.security import LOCAL_HOSTS

ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(host: str) -> tuple[str, ...] | None:
    """The Host names to answer when bound to `host`: local names, plus `host` itself; None (any) for 0.0.0.0/::."""
    if host in ANY_ADDRESS:
        return None
    return LOCAL_HOSTS if host in LOCAL_HOSTS else (*LOCAL_HOSTS, host)


def url_of(host: str, port: int) -> str:
    """The URL to open for a server bound to `host`:`port`."""
    shown = "127.0.0.1" if host in ANY_ADDRESS else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def _config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
                          timeout_graceful_shutdown=5)


def _bound_port(server: uvicorn.Server) -> int:
    for s in server.servers:
        for sock in s.sockets:
            return int(sock.getsockname()[1])
    raise FeaturescopeError("the server has no listening socket")


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that calls `announce(url)` once its socket listens."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[str], None]) -> None:
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self.announce(url_of(self.config.host, _bound_port(self)))


class ServerThread:
    """A uvicorn server for `app` in a background thread; `port=0` picks a free port. Use as a context manager."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        self.host = host
        self.server = uvicorn.Server(_config(app, host, port, log_level))
        self.thread = threading.Thread(target=self._run, name="featurescope-explorer", daemon=True)
        self.port = port

    def _run(self) -> None:
        with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind; start() reports it
            self.server.run()

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; returns once the socket listens (FeaturescopeError if it does not in `timeout` s)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise FeaturescopeError(f"the explorer did not start on {self.host}:{self.port} (port in use?)")
            time.sleep(0.05)
        self.port = _bound_port(self.server)
        return self

    @property
    def url(self) -> str:
        return url_of(self.host, self.port)

    def stop(self) -> None:
        """Ask the server to stop and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(db_path: str | Path, *, sae: Any = None, model: Any = None, host: str = "127.0.0.1", port: int = 8765,
          device: str = "cpu", log_level: str = "warning", eval_path: str | Path | None = None,
          announce: Callable[[str], None] = print) -> None:
    """Serve the explorer of `db_path` in the foreground until interrupted; `announce(url)` once it listens."""
    from featurescope.server.app import create_app

    if not 0 <= port <= 65535:
        raise FeaturescopeError(f"port {port} is out of range (0..65535)")
    app = create_app(db_path, sae=sae, model=model, allowed_hosts=allowed_hosts(host), device=device,
                     eval_path=eval_path)
    server = AnnouncingServer(_config(app, host, port, log_level), announce)
    try:
        server.run()
    except SystemExit:
        raise FeaturescopeError(f"could not listen on {host}:{port} (in use, or not an address of this machine?)"
                                ) from None
