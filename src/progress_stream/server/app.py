"""The FastAPI application of one :class:`~progress_stream.server.wiring.Services`: its lifespan (start
the engine, drain, snapshot), the edge, the routes, and every error answered through the one answer path."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from progress_stream.contract.errors import BadInput, MethodNotAllowed, RouteNotFound, ServiceError
from progress_stream.contract.wire import CreateStream, Wire
from progress_stream.server.docs import SWAGGER_UI_DIR, SWAGGER_UI_URL, docs_router
from progress_stream.server.edge import EdgeGuard
from progress_stream.server.page import PAGE_DIR, DemoFiles, PageFiles, page_router
from progress_stream.server.routes import ops_router, v1_router
from progress_stream.server.sockets.asgi import gateway_router, ws_router
from progress_stream.server.wiring import Services

log = logging.getLogger(__name__)

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (the router itself names only the first route's)."""
    return ", ".join(
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    )


def routing_error(request: Request, exc: StarletteHTTPException) -> ServiceError:
    """No route or a wrong method, as a service error (no path echoed)."""
    if exc.status_code == 405:
        return MethodNotAllowed("this route does not take that method (see the Allow header)", allowed_methods(request))
    return RouteNotFound("no such route: see /docs for the API")


#: Where FastAPI says a parameter came from: not part of its name.
LOCATIONS = ("body", "query", "path", "header", "cookie")


def validation_error(exc: RequestValidationError) -> BadInput:
    first = exc.errors()[0]
    loc = first["loc"][1:] if first["loc"][:1] and first["loc"][0] in LOCATIONS else first["loc"]
    field = ".".join(str(p) for p in loc) or "body"
    return BadInput(field, f"{field}: {first['msg']}")


def body_limit(wire: Wire, path: str) -> int:
    """A route's body limit: the largest body its frame limit allows (derived, so never tighter)."""
    frames = {"/v1/progress": wire.max_frames_stateless, "/v1/frames": wire.max_frames_per_tick}
    return wire.max_body_bytes(frames.get(path, wire.max_frames_per_message))


def openapi_schema(app: FastAPI, wire: Wire) -> dict[str, Any]:
    """The schema with this server's real limits: the request bodies are the :class:`Wire` models."""
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (wire.frames_request, wire.progress_request, wire.tick_request, CreateStream):
        components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return schema


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


def create_app(services: Services) -> FastAPI:
    """The app of ``services`` (built by :func:`~progress_stream.server.wiring.build`); routes reach them
    as ``request.app.state.services``."""
    settings = services.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.engine.start()
        quiet_collector()
        services.ready = True
        try:
            yield
        finally:
            services.ready = False
            saved = await services.engine.stop()
            log.info(
                "stopped: every accepted frame processed%s", ", state saved" if settings.state_file and saved else ""
            )

    app = FastAPI(
        title="progress-stream",
        version="1",
        summary="Online, causal action progress from streamed per-frame embeddings.",
        lifespan=lifespan,
        docs_url=None,  # docs.py serves /docs from the package's Swagger UI, not from a CDN
        redoc_url=None,  # ReDoc would load from a CDN: not served
    )
    app.state.services = services
    app.add_middleware(
        EdgeGuard,
        admission=services.admission,
        answers=services.answers,
        body_limit=lambda path: body_limit(services.wire, path),
        body_timeout_s=settings.body_timeout_s,
    )

    async def answer(request: Request, exc: Exception) -> Response:
        if isinstance(exc, RequestValidationError):
            exc = validation_error(exc)
        elif isinstance(exc, StarletteHTTPException):
            exc = routing_error(request, exc)
        return services.answers.error(exc).response()

    for kind in (ServiceError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(kind, answer)

    app.include_router(v1_router)
    if settings.ws_plane == "asgi":  # else the native plane takes the socket before any route
        app.include_router(ws_router)
    app.include_router(gateway_router)
    app.include_router(ops_router)
    app.include_router(page_router)
    app.include_router(docs_router)
    app.mount("/static", PageFiles(directory=PAGE_DIR), name="static")
    app.mount(SWAGGER_UI_URL, PageFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")
    app.mount("/demo", DemoFiles(settings.demo_dir), name="demo")
    schema = openapi_schema(app, services.wire)
    app.openapi = lambda: schema  # type: ignore[method-assign]
    return app
