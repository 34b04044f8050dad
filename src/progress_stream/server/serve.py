"""Run the app under uvicorn with the settings measured to be fastest (see README "Serving")."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn._types import ASGIApplication

from progress_stream.contract.wire import Wire
from progress_stream.engine.durability.snapshot import SnapshotError, identity, load_state
from progress_stream.engine.durability.store import RedisStore, StoreUnavailable
from progress_stream.engine.runtime import CellRuntime, ModelError
from progress_stream.server.app import create_app, make_store
from progress_stream.server.http_protocol import http_protocol
from progress_stream.server.settings import Settings
from progress_stream.server.sockets.native import NativePlane

log = logging.getLogger(__name__)

#: Open requests get this long after SIGTERM: under compose's 30 s grace, with every deadline
#: (headers, body: 10 s each by default) shorter still, so a slow client cannot hold the exit.
GRACEFUL_SHUTDOWN_S = 20


def uvicorn_config(
    app: ASGIApplication, settings: Settings, wire: Wire, log_level: str = "info", native: bool = False
) -> uvicorn.Config:
    """One process (it owns its streams), uvloop + httptools (with a header deadline), no per-message deflate;
    a WebSocket message may be as large as a valid JSON message of ``max_frames_per_message`` frames.
    ``native``: stream sockets go to the native data plane (``app`` is then the service's app)."""
    max_size = wire.max_body_bytes(settings.max_frames_per_message)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=http_protocol(settings.header_timeout_s, NativePlane(app, max_size) if native else None),
        ws="websockets-sansio",
        ws_max_size=max_size,
        ws_per_message_deflate=False,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def preflight(settings: Settings) -> Wire:
    """Refuse to start, before serving anything, on a model or a state file this server cannot use;
    the wire contract the model gives."""
    runtime = CellRuntime(settings.model_path, "cpu")
    if settings.state_file is not None:
        expected = identity(runtime.metadata.get("checkpoint_sha256", ""), settings.retained_window)
        load_state(settings.state_file, expected, settings.max_streams, settings.state_on_mismatch)
    store = make_store(settings, runtime)
    if store is not None:
        try:
            asyncio.run(checked(store))
        except StoreUnavailable as exc:
            if settings.state_required:
                raise
            log.warning("%s; starting anyway (PROGRESS_STATE_REQUIRED=false), durability degraded", exc)
    return Wire(runtime.embedding_dim, settings.max_frames_per_message, settings.max_frames_stateless)


async def checked(store: RedisStore) -> None:
    try:
        await store.check()
    finally:
        await store.close()


def run(model: Path | None = None, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Serve; a model or state file that cannot be used exits with code 2 and one line naming it."""
    overrides = {k: v for k, v in {"model_path": model, "host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    try:
        wire = preflight(settings)
    except (ModelError, SnapshotError, StoreUnavailable) as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(2) from None
    app = create_app(settings)
    config = uvicorn_config(app, settings, wire, log_level, native=settings.ws_plane == "native")
    StoppingServer(config, app).run()


class StoppingServer(uvicorn.Server):
    """uvicorn's server that tells the app when a stop begins (``app.state.stopping``), so long-lived
    responses such as the board's event stream end at once instead of holding the graceful shutdown."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.stopping = True
        super().handle_exit(sig, frame)
