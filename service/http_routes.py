"""HTTP routes: thin handlers that parse, call the engine and answer."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from service.engine import Engine
from service.errors import BadInput, PayloadTooLarge, Unauthorized
from service.protocol import (
    STREAM_ID,
    STREAM_ID_RULE,
    CreateStream,
    ErrorReply,
    FramesReply,
    FramesRequest,
    ProgressRequest,
    check_stream_id,
    embeddings_array,
    parse_frames,
)
from service.settings import Settings

JSON = "application/json"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorReply, "description": what}
    for code, what in (
        (401, "missing or wrong API key"),
        (404, "unknown stream"),
        (409, "seq conflict: resume from error.expected_seq"),
        (413, "too many frames or too large a body"),
        (422, "invalid input; error.field names it"),
        (503, "stream limit or overload; see Retry-After"),
    )
}


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def stream_id_param(
    stream_id: Annotated[
        str, Path(description=STREAM_ID_RULE, json_schema_extra={"pattern": STREAM_ID.pattern, "maxLength": 64})
    ],
) -> str:
    """Every route's ``{stream_id}``, checked by the one validator (the schema declares its pattern)."""
    return check_stream_id(stream_id)


StreamId = Annotated[str, Depends(stream_id_param)]


def require_api_key(request: Request, settings: SettingsDep) -> None:
    if settings.api_key and request.headers.get("authorization") != f"Bearer {settings.api_key}":
        raise Unauthorized("send 'Authorization: Bearer <API key>'")


def json_body(model: type[BaseModel]) -> dict:
    """OpenAPI description of a body the handler parses itself (orjson, one parser for every transport)."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": model.model_json_schema()}}}}


async def read_json(request: Request, settings: Settings) -> Any:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_message_bytes:
        raise PayloadTooLarge("body", f"body of {declared} bytes exceeds {settings.max_message_bytes}")
    body = await request.body()
    if len(body) > settings.max_message_bytes:
        raise PayloadTooLarge("body", f"body of {len(body)} bytes exceeds {settings.max_message_bytes}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput("body", f"malformed JSON: {exc}") from exc


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type=JSON)


v1_router = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERRORS, tags=["v1"])


@v1_router.post("/streams", status_code=201, summary="Create a stream (idempotent with an id)")
async def create_stream(engine: EngineDep, response: Response, body: CreateStream | None = None) -> dict:
    stream, created = engine.create(body.stream_id if body else None)
    response.status_code = 201 if created else 200
    return {"stream_id": stream.id, "next_seq": stream.next_seq, "model": engine.model_summary()}


@v1_router.put("/streams/{stream_id}", status_code=201, summary="Create a stream with this id (idempotent)")
async def put_stream(stream_id: StreamId, engine: EngineDep, response: Response) -> dict:
    """Same as ``POST /v1/streams`` with an id, but the id is in the path, so a proxy can route by it."""
    return await create_stream(engine, response, CreateStream(stream_id=stream_id))


@v1_router.post(
    "/streams/{stream_id}/frames",
    response_model=FramesReply,
    openapi_extra=json_body(FramesRequest),
    summary="Send frames seq.. of a stream; get each frame's progress",
)
async def post_frames(stream_id: StreamId, request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    started = time.perf_counter()
    seq, frames, reset = parse_frames(
        await read_json(request, settings), engine.runtime.embedding_dim, settings.max_frames_per_message
    )
    progress, next_seq = await engine.frames(stream_id, seq, frames, reset)
    engine.metrics.request_seconds.labels("http").observe(time.perf_counter() - started)
    return json_response({"stream_id": stream_id, "seq": seq, "progress": progress, "next_seq": next_seq})


@v1_router.get("/streams/{stream_id}", summary="A stream's state")
async def get_stream(stream_id: StreamId, engine: EngineDep) -> dict:
    return engine.describe(engine.get(stream_id))


@v1_router.delete("/streams/{stream_id}", status_code=204, summary="Delete a stream")
async def delete_stream(stream_id: StreamId, engine: EngineDep) -> Response:
    engine.delete(stream_id)
    return Response(status_code=204)


@v1_router.post("/progress", openapi_extra=json_body(ProgressRequest), summary="Stateless: one whole action")
async def progress(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    body = await read_json(request, settings)
    if not isinstance(body, dict):
        raise BadInput("body", "expected a JSON object with embeddings")
    frames = embeddings_array(body.get("embeddings"), engine.runtime.embedding_dim, settings.max_frames_stateless)
    return json_response({"progress": await engine.progress_once(frames)})


@v1_router.get("/model", summary="The served model's metadata")
async def model(engine: EngineDep) -> dict:
    return engine.runtime.describe()


ops_router = APIRouter(tags=["operations"])


@ops_router.get("/healthz", summary="Alive")
async def healthz() -> dict:
    return {"status": "ok"}


@ops_router.get("/readyz", summary="Model loaded and warmed up")
async def readyz(request: Request) -> Response:
    ready = bool(getattr(request.app.state, "ready", False))
    return json_response({"ready": ready}, 200 if ready else 503)


@ops_router.get("/metrics", summary="Prometheus metrics")
async def metrics(engine: EngineDep) -> Response:
    return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)
