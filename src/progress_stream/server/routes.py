"""HTTP routes: thin handlers that parse, call the engine and answer with their contract's reply model."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from progress_stream.contract.errors import ERRORS
from progress_stream.contract.gateway import TickReply
from progress_stream.contract.replies import (
    ErrorReply,
    FramesReply,
    Health,
    ModelInfo,
    ModelSummary,
    ProgressReply,
    Readiness,
    StreamCreated,
    StreamInfo,
    StreamPage,
    StreamRow,
)
from progress_stream.contract.wire import FPS_LIMITS, FPS_RULE, STREAM_ID, STREAM_ID_RULE, Wire, check_stream_id
from progress_stream.engine.engine import Engine
from progress_stream.engine.streams import Tenant
from progress_stream.server import board
from progress_stream.server.edge import TENANT
from progress_stream.server.sockets.gateway import GatewaySocket
from progress_stream.server.wiring import Services

JSON = "application/json"


def error_responses(*codes: str) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that can answer these error codes (described by the table)."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    return {
        status: {"model": ErrorReply, "description": "; ".join(f"{c}: {ERRORS[c].meaning}" for c in names)}
        for status, names in by_status.items()
    }


#: What every /v1 route can answer before its handler runs (the edge guards and the id check).
EDGE_ERRORS = (
    "wrong_host",
    "unauthorized",
    "forbidden_origin",
    "too_large",
    "unsupported_media_type",
    "request_timeout",
)
BODY_ERRORS = ("invalid_input", "empty", "wrong_dimension", "not_finite", "too_many_frames")
#: What a route that may look a stream up in the shared store can answer besides.
STORE_ERRORS = ("store_unreachable", "stream_unreadable")


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_engine(services: ServicesDep) -> Engine:
    return services.engine


def get_wire(services: ServicesDep) -> Wire:
    return services.wire


def get_tenant(request: Request) -> Tenant:
    """Who asks: the edge has checked the key of every /v1 request and left its tenant in the scope."""
    return request.scope[TENANT]


EngineDep = Annotated[Engine, Depends(get_engine)]
WireDep = Annotated[Wire, Depends(get_wire)]
TenantDep = Annotated[Tenant, Depends(get_tenant)]


def stream_id_param(
    stream_id: Annotated[
        str, Path(description=STREAM_ID_RULE, json_schema_extra={"pattern": STREAM_ID.pattern, "maxLength": 64})
    ],
) -> str:
    """Every route's ``{stream_id}``, checked by the one validator (the schema declares its pattern)."""
    return check_stream_id(stream_id)


StreamId = Annotated[str, Depends(stream_id_param)]


def json_body(name: str, required: bool = True) -> dict:
    """OpenAPI reference to a body the handler validates itself against the server's :class:`Wire` models."""
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"requestBody": {"required": required, "content": {JSON: {"schema": schema}}}}


def json_response(model: Any, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, media_type=JSON)


v1_router = APIRouter(prefix="/v1", responses=error_responses(*EDGE_ERRORS), tags=["v1"])


CREATED = {
    201: {"model": StreamCreated, "description": "created"},
    200: {"model": StreamCreated, "description": "the stream already exists: its state"},
    **error_responses("invalid_input", "stream_id_taken", "too_many_streams", "stream_quota", *STORE_ERRORS),
}


async def created(engine: Engine, stream_id: str | None, tenant: Tenant, fps: float | None) -> Response:
    stream, new = await engine.open(stream_id, tenant, fps)
    reply = StreamCreated(
        stream_id=stream.id,
        next_seq=stream.next_seq,
        fps=engine.fps_of(stream),
        model=ModelSummary(**engine.model_summary()),
    )
    return json_response(reply, 201 if new else 200)


@v1_router.post(
    "/streams",
    responses=CREATED,
    openapi_extra=json_body("CreateStream", required=False),
    summary="Create a stream (idempotent with an id)",
)
async def create_stream(request: Request, engine: EngineDep, tenant: TenantDep) -> Response:
    body = Wire.parse_create(await request.body())
    return await created(engine, body.stream_id, tenant, body.fps)


@v1_router.put("/streams/{stream_id}", responses=CREATED, summary="Create a stream with this id (idempotent)")
async def put_stream(
    stream_id: StreamId,
    engine: EngineDep,
    tenant: TenantDep,
    fps: Annotated[float | None, Query(**FPS_LIMITS, description=FPS_RULE)] = None,
) -> Response:
    """Same as ``POST /v1/streams`` with an id, but the id is in the path, so a proxy can route by it."""
    return await created(engine, stream_id, tenant, fps)


@v1_router.post(
    "/streams/{stream_id}/frames",
    response_model=FramesReply,
    responses={
        200: {"description": "each frame's answer"},
        **error_responses(
            *BODY_ERRORS,
            "stream_not_found",
            "seq_conflict",
            "overloaded",
            "shutting_down",
            "inference_failed",
            *STORE_ERRORS,
        ),
    },
    openapi_extra=json_body("FramesRequest"),
    summary="Send frames seq.. of a stream; get each frame's progress, band and time to finish",
)
async def post_frames(
    stream_id: StreamId, request: Request, engine: EngineDep, wire: WireDep, tenant: TenantDep
) -> Response:
    started = time.perf_counter()
    seq, frames, reset = wire.parse_frames(await request.body())
    answers, next_seq = await engine.frames(stream_id, seq, frames, reset, tenant)
    engine.metrics.request_seconds.labels("http").observe(time.perf_counter() - started)
    return Response(FramesReply.encode(stream_id, seq, answers, next_seq), media_type=JSON)


@v1_router.post(
    "/frames",
    response_model=TickReply,
    responses={
        200: {"description": "one result per entry, in order: each frame's answer and the next seq, or its error"},
        **error_responses("protocol_violation"),
    },
    openapi_extra=json_body("TickRequest"),
    summary="Frames of many streams in one request; each entry answered on its own",
)
async def post_tick(request: Request, services: ServicesDep, tenant: TenantDep) -> Response:
    """The gateway's tick over HTTP: entries name their streams (no attach); an entry's error (a seq
    conflict, an unknown stream, a bad value) is its own, the other entries are processed as if it were absent."""
    started = time.perf_counter()
    gateway = GatewaySocket(services, tenant)
    reply = await gateway.json_tick(await request.body(), lookup=lambda sid: services.engine.get(sid, tenant))
    services.engine.metrics.request_seconds.labels("http").observe(time.perf_counter() - started)
    return Response(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


@v1_router.get(
    "/streams/{stream_id}",
    response_model=StreamInfo,
    responses=error_responses("invalid_input", "stream_not_found", *STORE_ERRORS),
    summary="A stream's state",
)
async def get_stream(stream_id: StreamId, engine: EngineDep, tenant: TenantDep) -> StreamInfo:
    return StreamInfo(**engine.describe(await engine.get(stream_id, tenant)))


@v1_router.delete(
    "/streams/{stream_id}",
    status_code=204,
    responses=error_responses("invalid_input", "stream_not_found"),
    summary="Delete a stream",
)
async def delete_stream(stream_id: StreamId, engine: EngineDep, tenant: TenantDep) -> Response:
    await engine.delete(stream_id, tenant)
    return Response(status_code=204)


@v1_router.post(
    "/progress",
    response_model=ProgressReply,
    responses={
        200: {"description": "each frame's answer"},
        **error_responses(*BODY_ERRORS, "too_many_streams", "overloaded", "shutting_down", "inference_failed"),
    },
    openapi_extra=json_body("ProgressRequest"),
    summary="Stateless: one whole action",
)
async def progress(request: Request, engine: EngineDep, wire: WireDep) -> Response:
    frames = wire.parse_progress(await request.body())
    return Response(ProgressReply.encode(await engine.progress_once(frames)), media_type=JSON)


@v1_router.get(
    "/streams", response_model=StreamPage, summary="The caller's streams (the admin key: all), a page at a time"
)
async def list_streams(
    engine: EngineDep,
    tenant: TenantDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    prefix: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = "",
) -> StreamPage:
    streams = board.listed(engine.table, tenant, prefix)
    page = [StreamRow(**row) for row in board.rows(engine.table, streams[offset : offset + limit])]
    return StreamPage(total=len(streams), offset=offset, limit=limit, streams=page)


@v1_router.get(
    "/board/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **error_responses("too_many_subscribers"),
    },
    summary="Live board: a snapshot, then coalesced updates at most every 100 ms (Server-Sent Events)",
)
async def board_events(services: ServicesDep, tenant: TenantDep) -> StreamingResponse:
    queue = services.board.subscribe(tenant)
    events = board.events(services.board, queue, lambda: services.stopping)
    return StreamingResponse(events, media_type="text/event-stream")


@v1_router.get("/model", response_model=ModelInfo, summary="The served model's metadata")
async def model(engine: EngineDep) -> ModelInfo:
    return ModelInfo(**engine.runtime.describe())


#: The edge guards run in front of these too (a foreign Origin, a body sent to them).
ops_router = APIRouter(
    tags=["operations"],
    responses=error_responses(
        "wrong_host", "forbidden_origin", "too_large", "unsupported_media_type", "request_timeout"
    ),
)


@ops_router.get("/healthz", response_model=Health, summary="Alive")
async def healthz() -> Health:
    return Health()


@ops_router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready (starting or stopping)"}},
    summary="Model loaded and warmed up",
)
async def readyz(services: ServicesDep) -> Response:
    """Ready, and how durable the streams are: ``none`` (no shared store), ``ok``, ``partial`` (the store
    refuses some streams' writes: ``unstored_streams`` counts them) or ``degraded`` (the store cannot be
    written: streams are served but a lost replica would lose them)."""
    shared = services.engine.shared
    reply = (
        Readiness(ready=services.ready, durability="none", unstored_streams=0)
        if shared is None
        else Readiness(ready=services.ready, durability=shared.durability, unstored_streams=shared.unstored_count)
    )
    return json_response(reply, 200 if services.ready else 503)


@ops_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(engine: EngineDep) -> Response:
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
