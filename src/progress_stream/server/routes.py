"""HTTP routes: thin handlers that parse, call the engine and answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from progress_stream.contract.errors import ERRORS
from progress_stream.contract.wire import (
    STREAM_ID,
    STREAM_ID_RULE,
    ErrorReply,
    FramesReply,
    ProgressReply,
    StreamCreated,
    StreamPage,
    Wire,
    check_stream_id,
)
from progress_stream.engine.engine import Engine
from progress_stream.server import board

JSON = "application/json"
BOARD_PERIOD_S = 0.1  # the board's updates are coalesced to at most 10 a second
BOARD_CPU_SHARE = 0.02  # and slowed down so that a board never takes more than 2 % of the loop


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
EDGE_ERRORS = ("unauthorized", "forbidden_origin", "too_large", "unsupported_media_type", "request_timeout")
BODY_ERRORS = ("invalid_input", "empty", "wrong_dimension", "not_finite", "too_many_frames")


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_wire(request: Request) -> Wire:
    return request.app.state.wire


EngineDep = Annotated[Engine, Depends(get_engine)]
WireDep = Annotated[Wire, Depends(get_wire)]


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


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON)


v1_router = APIRouter(prefix="/v1", responses=error_responses(*EDGE_ERRORS), tags=["v1"])


CREATED = {
    201: {"model": StreamCreated, "description": "created"},
    200: {"model": StreamCreated, "description": "the stream already exists: its state"},
    **error_responses("invalid_input", "too_many_streams"),
}


async def created(engine: Engine, stream_id: str | None) -> Response:
    stream, new = await engine.open(stream_id)
    body = {"stream_id": stream.id, "next_seq": stream.next_seq, "model": engine.model_summary()}
    return json_response(body, 201 if new else 200)


@v1_router.post(
    "/streams",
    responses=CREATED,
    openapi_extra=json_body("CreateStream", required=False),
    summary="Create a stream (idempotent with an id)",
)
async def create_stream(request: Request, engine: EngineDep) -> Response:
    return await created(engine, Wire.parse_create(await request.body()))


@v1_router.put("/streams/{stream_id}", responses=CREATED, summary="Create a stream with this id (idempotent)")
async def put_stream(stream_id: StreamId, engine: EngineDep) -> Response:
    """Same as ``POST /v1/streams`` with an id, but the id is in the path, so a proxy can route by it."""
    return await created(engine, stream_id)


@v1_router.post(
    "/streams/{stream_id}/frames",
    responses={
        200: {"model": FramesReply, "description": "each frame's progress"},
        **error_responses(
            *BODY_ERRORS, "stream_not_found", "seq_conflict", "overloaded", "shutting_down", "inference_failed"
        ),
    },
    openapi_extra=json_body("FramesRequest"),
    summary="Send frames seq.. of a stream; get each frame's progress",
)
async def post_frames(stream_id: StreamId, request: Request, engine: EngineDep, wire: WireDep) -> Response:
    started = time.perf_counter()
    seq, frames, reset = wire.parse_frames(await request.body())
    progress, next_seq = await engine.frames(stream_id, seq, frames, reset)
    engine.metrics.request_seconds.labels("http").observe(time.perf_counter() - started)
    return json_response({"stream_id": stream_id, "seq": seq, "progress": progress, "next_seq": next_seq})


@v1_router.get(
    "/streams/{stream_id}", responses=error_responses("invalid_input", "stream_not_found"), summary="A stream's state"
)
async def get_stream(stream_id: StreamId, engine: EngineDep) -> dict:
    return engine.describe(await engine.get(stream_id))


@v1_router.delete(
    "/streams/{stream_id}",
    status_code=204,
    responses=error_responses("invalid_input", "stream_not_found"),
    summary="Delete a stream",
)
async def delete_stream(stream_id: StreamId, engine: EngineDep) -> Response:
    await engine.delete(stream_id)
    return Response(status_code=204)


@v1_router.post(
    "/progress",
    responses={
        200: {"model": ProgressReply, "description": "each frame's progress"},
        **error_responses(*BODY_ERRORS, "too_many_streams", "overloaded", "shutting_down", "inference_failed"),
    },
    openapi_extra=json_body("ProgressRequest"),
    summary="Stateless: one whole action",
)
async def progress(request: Request, engine: EngineDep, wire: WireDep) -> Response:
    frames = wire.parse_progress(await request.body())
    return json_response({"progress": await engine.progress_once(frames)})


@v1_router.get("/streams", summary="Every stream, a page at a time (sorted by id)")
async def list_streams(
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    prefix: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = "",
) -> StreamPage:
    streams = board.listed(engine.table, prefix)
    page = board.rows(engine.table, streams[offset : offset + limit])
    return StreamPage(total=len(streams), offset=offset, limit=limit, streams=page)


@v1_router.get(
    "/board/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
    summary="Live board: a snapshot, then coalesced updates at most every 100 ms (Server-Sent Events)",
)
async def board_events(request: Request, engine: EngineDep) -> StreamingResponse:
    return StreamingResponse(board_stream(request, engine), media_type="text/event-stream")


async def board_stream(request: Request, engine: Engine) -> AsyncIterator[bytes]:
    """``snapshot`` with every row, then ``update`` events with what changed; ends when the client
    leaves or the server stops. Reads the table, never the frame path; with many streams (a tick
    reads all of them: about 0.25 ms per 100 busy streams) the period grows to keep its share small."""
    watcher = board.Watcher(engine.table)
    started = time.perf_counter()
    yield sse("snapshot", watcher.update())
    spent = time.perf_counter() - started
    while not request.app.state.stopping and not await request.is_disconnected():
        await asyncio.sleep(max(BOARD_PERIOD_S, spent / BOARD_CPU_SHARE))
        started = time.perf_counter()
        update = watcher.update()
        spent = time.perf_counter() - started
        yield sse("update", update)


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@v1_router.get("/model", summary="The served model's metadata")
async def model(engine: EngineDep) -> dict:
    return engine.runtime.describe()


#: The edge guards run in front of these too (a foreign Origin, a body sent to them).
ops_router = APIRouter(
    tags=["operations"],
    responses=error_responses("forbidden_origin", "too_large", "unsupported_media_type", "request_timeout"),
)


@ops_router.get("/healthz", summary="Alive")
async def healthz() -> dict:
    return {"status": "ok"}


@ops_router.get(
    "/readyz",
    responses={503: {"description": "not ready (starting or stopping)"}},
    summary="Model loaded and warmed up",
)
async def readyz(request: Request) -> Response:
    """Ready, and how durable the streams are: ``none`` (no shared store), ``ok``, or ``degraded`` (the
    store cannot be written: streams are served but a lost replica would lose them)."""
    ready = bool(getattr(request.app.state, "ready", False))
    engine = getattr(request.app.state, "engine", None)
    shared = engine.shared if engine is not None else None
    durability = "none" if shared is None else ("degraded" if shared.degraded else "ok")
    return json_response({"ready": ready, "durability": durability}, 200 if ready else 503)


@ops_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(engine: EngineDep) -> Response:
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
