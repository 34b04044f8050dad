"""The FastAPI application: lifespan (load, warm up, restore, drain, snapshot) and error mapping."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.engine import Engine
from service.errors import (
    BadInput,
    EngineError,
    Overloaded,
    PayloadTooLarge,
    SeqConflict,
    StreamNotFound,
    Unauthorized,
    error_body,
    most_specific,
)
from service.http_routes import ops_router, v1_router
from service.runtime import CellRuntime
from service.settings import Settings
from service.ws_transport import ws_router

log = logging.getLogger(__name__)


HTTP_STATUS: dict[type[EngineError], int] = {
    PayloadTooLarge: 413,
    BadInput: 422,
    Unauthorized: 401,
    StreamNotFound: 404,
    SeqConflict: 409,
    Overloaded: 503,
}


#: Errors the router answers before any handler runs.
ROUTING_ERRORS: dict[int, tuple[str, str]] = {
    404: ("not_found", "no such route: see /docs for the API"),
    405: ("method_not_allowed", "this route does not take that method (see the Allow header)"),
}


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (the router itself names only the first route's)."""
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    )


def http_status(exc: EngineError) -> int:
    """The status of the most specific mapped class of ``exc`` (its MRO order), else 500."""
    return most_specific(HTTP_STATUS, exc, 500)


def warm_up(runtime: CellRuntime, max_batch: int) -> None:
    """Run the cell once at a few batch sizes so the first requests don't pay for allocation."""
    for batch in sorted({1, min(16, max_batch), max_batch}):
        runtime.step(
            np.zeros((batch, runtime.embedding_dim), np.float32),
            np.zeros(batch, np.int64),
            np.zeros((batch, runtime.hidden_dim), np.float32),
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = CellRuntime(settings.model_path, settings.providers, settings.threads)
        log.info("model %s on providers %s", settings.model_path, runtime.providers)
        warm_up(runtime, settings.max_batch)
        engine = Engine(runtime, settings)
        await engine.start()
        app.state.engine = engine
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            await engine.stop()
            log.info("stopped: every accepted frame processed%s", ", state saved" if settings.state_file else "")

    app = FastAPI(
        title="progress-stream",
        version="1",
        summary="Online, causal action progress from streamed per-frame embeddings.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ready = False

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError) -> Response:
        request.app.state.engine.metrics.errors.labels(exc.code).inc()
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return Response(orjson.dumps(error_body(exc)), http_status(exc), headers, "application/json")

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return await engine_error(request, BadInput(field, f"{field}: {first['msg']}"))

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """No route or a wrong method: the same error shape as every other answer, with no path echoed."""
        code, message = ROUTING_ERRORS.get(exc.status_code, ("http_error", "the request cannot be served"))
        body = {"error": {"code": code, "message": message}}
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else exc.headers
        return Response(orjson.dumps(body), exc.status_code, headers, "application/json")

    app.include_router(v1_router)
    app.include_router(ws_router)
    app.include_router(ops_router)
    return app
