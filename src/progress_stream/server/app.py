"""The FastAPI application: lifespan (load, warm up, restore, drain, snapshot) and error mapping."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from progress_stream.contract.errors import BadInput, ServiceError, error_body, error_headers
from progress_stream.contract.wire import CreateStream, Wire
from progress_stream.engine.durability.store import RedisStore
from progress_stream.engine.engine import Engine
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import StreamTable
from progress_stream.server.edge import Admission, EdgeGuard, Scope
from progress_stream.server.page import PAGE_DIR, page_router
from progress_stream.server.routes import ops_router, v1_router
from progress_stream.server.settings import Settings
from progress_stream.server.sockets.asgi import ws_router

log = logging.getLogger(__name__)

#: Errors the router answers before any handler runs (codes of :data:`progress_stream.contract.errors.ERRORS`).
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


def error_response(exc: ServiceError) -> Response:
    return Response(orjson.dumps(error_body(exc)), exc.spec.status, error_headers(exc.code), "application/json")


def make_store(settings: Settings, runtime: CellRuntime) -> RedisStore | None:
    """The shared state store the settings name, if any (its layout follows the model's state width)."""
    if settings.redis_url is None:
        return None
    model = runtime.metadata.get("checkpoint_sha256", "")
    layout = StreamTable.layout(runtime.hidden_dim, settings.retained_window)
    return RedisStore(settings.redis_url, settings.state_password, model, layout, settings.idle_ttl_s)


def body_limit(wire: Wire, path: str) -> int:
    """A route's body limit: the largest body its frame limit allows (derived, so never tighter)."""
    frames = wire.max_frames_stateless if path == "/v1/progress" else wire.max_frames_per_message
    return wire.max_body_bytes(frames)


def count_error(scope: Scope, code: str) -> None:
    engine = getattr(scope["app"].state, "engine", None)
    if engine is not None:
        engine.metrics.errors.labels(code).inc()


def openapi_schema(app: FastAPI, wire: Wire) -> dict[str, Any]:
    """The schema with this server's real limits: the request bodies are the :class:`Wire` models."""
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (wire.frames_request, wire.progress_request, CreateStream):
        components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


def warm_up(runtime: CellRuntime, max_batch: int) -> None:
    """Run the cell once at a few batch sizes so the first requests don't pay for allocation."""
    for batch in sorted({1, min(16, max_batch), max_batch}):
        runtime.step(
            np.zeros((batch, runtime.embedding_dim), np.float32),
            np.zeros(batch, np.int64),
            np.zeros((batch, runtime.hidden_dim), np.float32),
        )


#: Allocations between young-generation collections (CPython's default: 700). The per-message path
#: allocates a few short-lived containers per message; at the default the collector ran every ~100
#: messages and took 14 % of a served core at 1,000 streams (py-spy --native).
GC_GEN0_THRESHOLD = 50_000


def quiet_collector() -> None:
    """Move everything alive at start (modules, the app, the model, preallocated tables) out of the
    cyclic collector's scans, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = CellRuntime(settings.model_path, settings.providers, settings.threads)
        log.info("model %s on providers %s", settings.model_path, runtime.providers)
        warm_up(runtime, settings.max_batch)
        wire = Wire(runtime.embedding_dim, settings.max_frames_per_message, settings.max_frames_stateless)
        engine = Engine(runtime, settings.engine_config(), store=make_store(settings, runtime))
        await engine.start()
        quiet_collector()
        app.state.wire, app.state.engine = wire, engine
        schema = openapi_schema(app, wire)
        app.openapi = lambda: schema  # type: ignore[method-assign]
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
    app.state.stopping = False  # set by the server when a stop begins: long-lived responses end
    app.state.admission = Admission(settings.api_key, settings.allowed_origins)
    app.add_middleware(
        EdgeGuard,
        admission=app.state.admission,
        body_limit=lambda path: body_limit(app.state.wire, path),
        body_timeout_s=settings.body_timeout_s,
        count_error=count_error,
    )

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> Response:
        count_error(request.scope, exc.code)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return await service_error(request, BadInput(field, f"{field}: {first['msg']}"))

    @app.exception_handler(StarletteHTTPException)
    async def routing_error(request: Request, exc: StarletteHTTPException) -> Response:
        """No route or a wrong method: the same error shape as every other answer, with no path echoed."""
        code, message = ROUTING_ERRORS.get(exc.status_code, ("invalid_input", "the request cannot be served"))
        body = {"error": {"code": code, "message": message}}
        headers = {"Allow": allowed_methods(request)} if exc.status_code == 405 else exc.headers
        return Response(orjson.dumps(body), exc.status_code, headers, "application/json")

    app.include_router(v1_router)
    if settings.ws_plane == "asgi":  # else the native plane takes the socket before any route
        app.include_router(ws_router)
    app.include_router(ops_router)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    app.mount("/demo", StaticFiles(directory=settings.demo_dir, check_dir=False), name="demo")
    return app
