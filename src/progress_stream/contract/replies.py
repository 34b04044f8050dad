"""Every reply of the API as a pydantic model: the one schema of what the server answers.

Routes declare these as their response models (so ``/openapi.json`` describes every 2xx), the client
reads them, and the server builds each answer from them. The replies on the per-frame path (frames,
socket replies, board rows) are encoded by the ``encode``/``row`` functions beside their model: plain
dicts with exactly the model's fields, written by orjson, because a model instance per frame would cost
more than the rest of the answer; a test holds each encoder to its model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from progress_stream.contract.errors import BadInput, SeqConflict, ServiceError

REPLY = ConfigDict(extra="forbid")
NUMPY = orjson.OPT_SERIALIZE_NUMPY


class ModelSummary(BaseModel):
    """The served model, as a stream's creation reports it."""

    model_config = REPLY
    embedding_dim: int
    hidden_dim: int
    position_encoding: str
    format_version: str
    checkpoint_sha256: str
    providers: str = Field(description="the onnxruntime execution providers, comma-separated")


class StreamCreated(BaseModel):
    model_config = REPLY
    stream_id: str
    next_seq: int
    model: ModelSummary


class StreamInfo(BaseModel):
    """``GET /v1/streams/{id}``: where a stream stands."""

    model_config = REPLY
    stream_id: str
    next_seq: int = Field(description="frames accepted: the seq the next message must carry")
    processed_seq: int = Field(description="frames processed by the model")
    step: int = Field(description="frames into the current action")
    pending_frames: int = Field(description="accepted, not yet processed")
    created_at: float = Field(description="Unix time")
    idle_s: float


class StreamRow(BaseModel):
    """One stream as the board and ``GET /v1/streams`` show it."""

    model_config = REPLY
    stream_id: str
    progress: float | None = Field(description="the last progress answered; null before the first frame")
    step: int = Field(description="frames into the current action")
    processed_seq: int
    idle_s: float

    @staticmethod
    def row(stream_id: str, progress: float | None, step: int, processed_seq: int, idle_s: float) -> dict[str, Any]:
        return {
            "stream_id": stream_id,
            "progress": progress,
            "step": step,
            "processed_seq": processed_seq,
            "idle_s": idle_s,
        }


class BoardRow(StreamRow):
    """A row of the live board's events: a :class:`StreamRow` and its rate."""

    fps: float = Field(description="frames per second since the board last sent this row")


class BoardUpdate(BaseModel):
    """One event of ``GET /v1/board/events`` (``snapshot`` first, then ``update``): the rows that changed
    and the ids that left."""

    model_config = REPLY
    rows: list[BoardRow]
    removed: list[str]


class StreamPage(BaseModel):
    model_config = REPLY
    total: int
    offset: int
    limit: int
    streams: list[StreamRow]


class FramesReply(BaseModel):
    """``POST /v1/streams/{id}/frames``: each frame's progress."""

    model_config = REPLY
    stream_id: str
    seq: int
    progress: list[float]
    next_seq: int

    @staticmethod
    def encode(stream_id: str, seq: int, progress: np.ndarray, next_seq: int) -> bytes:
        return orjson.dumps(
            {"stream_id": stream_id, "seq": seq, "progress": progress, "next_seq": next_seq}, option=NUMPY
        )


class SocketReply(BaseModel):
    """A JSON frames message's answer on a stream's WebSocket."""

    model_config = REPLY
    seq: int
    progress: list[float]
    next_seq: int

    @staticmethod
    def encode(seq: int, progress: np.ndarray, next_seq: int) -> bytes:
        return orjson.dumps({"seq": seq, "progress": progress, "next_seq": next_seq}, option=NUMPY)


class ProgressReply(BaseModel):
    """``POST /v1/progress``: every frame of one action."""

    model_config = REPLY
    progress: list[float]

    @staticmethod
    def encode(progress: np.ndarray) -> bytes:
        return orjson.dumps({"progress": progress}, option=NUMPY)


class ModelInfo(BaseModel):
    """``GET /v1/model``: the cell's file, providers and every metadata entry the exporter wrote."""

    model_config = ConfigDict(extra="allow")
    path: str
    providers: list[str]
    format_version: str
    embedding_dim: str
    hidden_dim: str
    position_encoding: str


class Health(BaseModel):
    model_config = REPLY
    status: str = "ok"


class Readiness(BaseModel):
    model_config = REPLY
    ready: bool
    durability: str = Field(
        description="none (no shared store), ok, partial (the store refuses some streams' writes: a lost replica "
        "would lose those), or degraded (the store cannot be written: a lost replica would lose its streams)"
    )
    unstored_streams: int = Field(
        0,
        description="streams held here whose state the store does not hold because it refused their writes "
        "(their key holds a later seq, or cannot be read); 0 without a shared store",
    )


class ErrorBody(BaseModel):
    model_config = REPLY
    code: str = Field(description="a code of the error table")
    message: str
    field: str | None = Field(None, description="the offending field (invalid input)")
    expected_seq: int | None = Field(None, description="the seq to resume from (seq_conflict, inference_failed)")


class ErrorReply(BaseModel):
    """Every error, on every route: the same shape."""

    model_config = REPLY
    error: ErrorBody

    @staticmethod
    def of(exc: ServiceError) -> dict[str, Any]:
        body: dict[str, Any] = {"code": exc.code, "message": exc.message}
        if isinstance(exc, BadInput):
            body["field"] = exc.field
        if isinstance(exc, SeqConflict):
            body["expected_seq"] = exc.expected_seq
        return {"error": body}

    @staticmethod
    def encode(exc: ServiceError) -> bytes:
        return orjson.dumps(ErrorReply.of(exc))


class SocketErrorReply(ErrorReply):
    """An error on a stream's WebSocket: the error, and the seq of the message it answers (null if unknown)."""

    seq: int | None

    @staticmethod
    def encode_at(exc: ServiceError, seq: int | None) -> bytes:
        return orjson.dumps({"seq": seq, **ErrorReply.of(exc)})
