"""``progress serve``: build the server once (:mod:`.wiring`), then run it under uvicorn with the settings
measured to be fastest (see the docs' Performance page)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from uvicorn._types import ASGIApplication

from progress_stream.engine.durability.snapshot import SnapshotError
from progress_stream.engine.durability.store import StoreUnavailable
from progress_stream.engine.runtime import ModelError
from progress_stream.server.app import create_app
from progress_stream.server.http_protocol import http_protocol
from progress_stream.server.settings import Settings, settings_error
from progress_stream.server.sockets.native import NativePlane
from progress_stream.server.wiring import Services, build

#: Open requests get this long after SIGTERM: under compose's 30 s grace, with every deadline
#: (headers, body: 10 s each by default) shorter still, so a slow client cannot hold the exit.
GRACEFUL_SHUTDOWN_S = 20


def uvicorn_config(
    app: ASGIApplication, settings: Settings, max_size: int, native: NativePlane | None = None, log_level: str = "info"
) -> uvicorn.Config:
    """One process (it owns its streams), uvloop + httptools (with a header deadline), no per-message deflate;
    a WebSocket message may be as large as ``max_size``; stream sockets go to the ``native`` plane if given."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings.header_timeout_s, native),
        ws="websockets-sansio",
        ws_max_size=max_size,
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
    try:
        services = build(settings)
    except (ModelError, SnapshotError, StoreUnavailable) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    max_size = services.wire.max_body_bytes(settings.max_frames_per_message)
    native = NativePlane(services, max_size) if settings.ws_plane == "native" else None
    config = uvicorn_config(create_app(services), settings, max_size, native, log_level)
    StoppingServer(config, services).run()


class StoppingServer(uvicorn.Server):
    """uvicorn's server that tells the services when a stop begins, so long-lived responses such as the
    board's event stream end at once instead of holding the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, services: Services):
        super().__init__(config)
        self.services = services

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.services.stopping = True
        super().handle_exit(sig, frame)
