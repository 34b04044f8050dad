"""Wire formats: the JSON messages (pydantic models document them) and the compact binary frame format.

The hot path parses with orjson and checks by hand (one parser for HTTP and WebSocket alike);
the pydantic models below are the schema shown in OpenAPI and used for the cold endpoints.
"""

from __future__ import annotations

import re
import struct
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from service.errors import BadInput, TooManyFrames

STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STREAM_ID_RULE = "1-64 characters of [A-Za-z0-9_-]"

#: Binary request: little-endian ``uint64 seq, uint32 count, uint32 flags`` then ``count × D`` float32.
REQUEST_HEADER = struct.Struct("<QII")
#: Binary reply: ``uint64 seq, uint64 next_seq, uint32 count, uint32 flags`` then ``count`` float32 progress.
REPLY_HEADER = struct.Struct("<QQII")
FLAG_RESET = 1


class CreateStream(BaseModel):
    stream_id: str | None = Field(None, pattern=STREAM_ID.pattern, description=f"{STREAM_ID_RULE}; random if absent")


class FramesRequest(BaseModel):
    seq: int = Field(..., ge=0, description="stream-wide index of the chunk's first frame")
    embeddings: list[list[float]] = Field(..., description="one D-dimensional embedding per frame")
    reset: bool = Field(False, description="start a new action at the chunk's first frame")


class FramesReply(BaseModel):
    stream_id: str
    seq: int
    progress: list[float]
    next_seq: int


class ProgressRequest(BaseModel):
    embeddings: list[list[float]] = Field(..., description="every frame of one action, in order")


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    expected_seq: int | None = None


class ErrorReply(BaseModel):
    error: ErrorBody


def check_stream_id(stream_id: str) -> str:
    """The one stream-id check of every route and the WebSocket; the message never echoes the id."""
    if not STREAM_ID.match(stream_id):
        raise BadInput("stream_id", f"stream_id must be {STREAM_ID_RULE}")
    return stream_id


def embeddings_array(value: Any, dim: int, max_frames: int, field: str = "embeddings") -> np.ndarray:
    """A list of ``D``-float lists → float32 ``(n, D)``, with errors naming the field."""
    if not isinstance(value, list):
        raise BadInput(field, f"{field} must be a list of frames, each a list of {dim} numbers")
    if not value:
        raise BadInput(field, f"{field} is empty: send at least one frame", code="empty")
    if len(value) > max_frames:
        raise TooManyFrames(field, f"{field} has {len(value)} frames; at most {max_frames} per message")
    try:
        arr = np.array(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise BadInput(field, f"{field} must be a list of frames, each a list of {dim} numbers") from exc
    return check_embeddings(arr, dim, field)


def check_embeddings(arr: np.ndarray, dim: int, field: str = "embeddings") -> np.ndarray:
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[1] if arr.ndim == 2 else f"shape {arr.shape}"
        raise BadInput(field, f"{field}: each frame must have {dim} numbers, got {got}", code="wrong_dimension")
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise BadInput(f"{field}[{row}]", f"{field}[{row}] contains NaN or inf", code="not_finite")
    return arr


def parse_frames(obj: Any, dim: int, max_frames: int) -> tuple[int, np.ndarray, bool]:
    """A decoded JSON frames message → ``(seq, embeddings, reset)``."""
    if not isinstance(obj, dict):
        raise BadInput("body", "expected a JSON object with seq and embeddings")
    seq = obj.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise BadInput("seq", "seq must be a non-negative integer")
    reset = obj.get("reset", False)
    if not isinstance(reset, bool):
        raise BadInput("reset", "reset must be true or false")
    return seq, embeddings_array(obj.get("embeddings"), dim, max_frames), reset


def parse_binary(data: bytes, dim: int, max_frames: int) -> tuple[int, np.ndarray, bool]:
    """A binary frames message → ``(seq, embeddings, reset)``; raises ValueError if the framing is broken."""
    if len(data) < REQUEST_HEADER.size:
        raise ValueError(f"binary message shorter than its {REQUEST_HEADER.size}-byte header")
    seq, count, flags = REQUEST_HEADER.unpack_from(data)
    if len(data) != REQUEST_HEADER.size + 4 * count * dim:
        raise ValueError(f"binary message of {len(data)} bytes does not hold {count} frames of {dim} float32")
    if count == 0:
        raise BadInput("count", "count is 0: send at least one frame", code="empty")
    if count > max_frames:
        raise TooManyFrames("count", f"count is {count}; at most {max_frames} frames per message")
    arr = np.frombuffer(data, dtype="<f4", offset=REQUEST_HEADER.size).reshape(count, dim)
    return seq, check_embeddings(arr, dim), bool(flags & FLAG_RESET)


def binary_reply(seq: int, next_seq: int, progress: np.ndarray) -> bytes:
    return REPLY_HEADER.pack(seq, next_seq, len(progress), 0) + progress.astype("<f4", copy=False).tobytes()


def binary_request(seq: int, embeddings: np.ndarray, reset: bool = False) -> bytes:
    """Encode a binary frames message (used by the client and the load test)."""
    arr = np.ascontiguousarray(embeddings, dtype="<f4")
    return REQUEST_HEADER.pack(seq, len(arr), FLAG_RESET if reset else 0) + arr.tobytes()


def parse_binary_reply(data: bytes) -> tuple[int, int, np.ndarray]:
    seq, next_seq, count, _ = REPLY_HEADER.unpack_from(data)
    return seq, next_seq, np.frombuffer(data, dtype="<f4", offset=REPLY_HEADER.size, count=count)
