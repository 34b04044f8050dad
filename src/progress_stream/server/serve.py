"""``progress serve``: build the server once (:mod:`.wiring`), then run it under uvicorn with the settings
measured to be fastest (see the docs' Performance page).

Each connection holds a file descriptor, and so does each handshake before its upgrade completes: with
the usual soft limit of 1,024 open files, ~1,000 idle sockets made accepts, the state file's writes and
the store's connects fail with EMFILE. The soft limit is raised to the hard one at start, and connections
are capped below it (``max_connections``), leaving room for the rest.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from uvicorn._types import ASGIApplication

from progress_stream.engine.durability.snapshot import SnapshotError
from progress_stream.engine.durability.store import StoreUnavailable
from progress_stream.engine.runtime import ModelError
from progress_stream.server.answers import Answers
from progress_stream.server.app import create_app
from progress_stream.server.http_protocol import http_protocol
from progress_stream.server.settings import Settings, settings_error
from progress_stream.server.sockets.asgi import socket_protocol
from progress_stream.server.sockets.native import NativePlane
from progress_stream.server.wiring import Services, build

log = logging.getLogger(__name__)

#: Open requests get this long after SIGTERM: under compose's 30 s grace, with every deadline
#: (headers, body: 10 s each by default) shorter still, so a slow client cannot hold the exit.
GRACEFUL_SHUTDOWN_S = 20


def uvicorn_config(
    app: ASGIApplication,
    settings: Settings,
    max_sizes: tuple[int, int],
    answers: Answers,
    native: NativePlane | None = None,
    log_level: str = "info",
    max_connections: int | None = None,
) -> uvicorn.Config:
    """One process (it owns its streams), uvloop + httptools (with a header deadline and bounds, refusals
    answered through ``answers``), no per-message deflate; a WebSocket message may be as large as
    ``max_sizes`` says (a stream socket's, a gateway's); sockets go to the ``native`` plane if given; at most
    ``max_connections`` open."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings.header_timeout_s, answers, max_connections, native),
        ws=socket_protocol(max_sizes[0]),  # uvicorn's websockets-sansio, with the native plane's bounds
        ws_max_size=max_sizes[1],
        ws_ping_interval=settings.ws_ping_interval_s,  # the native plane pings with the same settings
        ws_ping_timeout=settings.ws_ping_timeout_s,
        ws_per_message_deflate=False,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def run(model: Path | None = None, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve; a setting, model, state file or store that cannot be used exits with code 2 and one line naming it."""
    overrides = {k: v for k, v in {"model_path": model, "host": host, "port": port}.items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        sys.stderr.write(f"error: {settings_error(exc)}\n")
        raise SystemExit(2) from None
    max_connections = connection_cap(settings.max_connections)
    try:
        services = build(settings)
    except (ModelError, SnapshotError, StoreUnavailable) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    stream_max = services.wire.max_body_bytes(settings.max_frames_per_message)
    tick_max = services.wire.max_body_bytes(settings.max_frames_per_tick)
    native = NativePlane(services, stream_max, tick_max) if settings.ws_plane == "native" else None
    app = create_app(services)
    config = uvicorn_config(app, settings, (stream_max, tick_max), services.answers, native, log_level, max_connections)
    StoppingServer(config, services).run()


def raise_open_files() -> tuple[int, int]:
    """Raise the soft limit on open files to the hard one (a process may, unprivileged); returns the
    soft limit before and after."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and before < hard:
        with contextlib.suppress(ValueError, OSError):  # e.g. above the kernel's own ceiling
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return before, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def default_max_connections(open_files: int) -> int:
    """The connections a server with this many open files serves: the rest (at least 128, an eighth of
    a large limit) stays for the model, logs, the state file and the shared store's connections."""
    return max(1, open_files - max(128, open_files // 8))


def connection_cap(configured: int | None) -> int:
    """Raise the open-file limit, then the cap on connections (``configured``, else derived); logs both."""
    before, open_files = raise_open_files()
    cap = configured or default_max_connections(open_files)
    raised = f", raised from {before}" if open_files != before else ""
    log.info("open files: %d (soft limit%s); serving at most %d connections", open_files, raised, cap)
    if cap > open_files:
        log.warning("PROGRESS_MAX_CONNECTIONS=%d exceeds the open-file limit %d", cap, open_files)
    return cap


class StoppingServer(uvicorn.Server):
    """uvicorn's server that tells the services when a stop begins, so long-lived responses such as the
    board's event stream end at once instead of holding the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, services: Services):
        super().__init__(config)
        self.services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.services.stopping = True
        super().handle_exit(sig, frame)
