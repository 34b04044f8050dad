"""Run the app under uvicorn with the settings measured to be fastest (see README "Serving")."""

from __future__ import annotations

from pathlib import Path

import uvicorn
from uvicorn._types import ASGIApplication

from service.app import create_app
from service.settings import Settings


def uvicorn_config(app: ASGIApplication, settings: Settings, log_level: str = "info") -> uvicorn.Config:
    """One process (it owns its streams), uvloop + httptools, no per-message deflate."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.max_message_bytes,
        ws_per_message_deflate=False,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )


def run(model: Path | None = None, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    overrides = {k: v for k, v in {"model_path": model, "host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    uvicorn.Server(uvicorn_config(create_app(settings), settings, log_level)).run()
