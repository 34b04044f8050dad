"""The gateway protocol: one connection carries the frames of many streams (a site's edge box, a capture
server batching its cameras). Shared by the server, the client and the load test.

A WebSocket at :data:`GATEWAY_SOCKET` first *attaches* stream ids (JSON ``{"attach": [ids]}``): each is
created or resumed, and answered with a *handle* (a small integer, stable for the connection) and its
``next_seq``. A *tick* then carries frames for any number of attached streams, in one message:

* JSON: ``{"frames": [{"stream_id", "seq", "embeddings", "reset"?}, ...]}`` → ``{"results": [...]}``, one
  result per entry in the same order: ``{"stream_id", "seq", "progress", "band", "remaining_frames",
  "remaining_band", "remaining_s", "next_seq"}`` (:class:`~.replies.PerFrame`) or
  ``{"stream_id", "seq", "error": {...}}``. ``POST /v1/frames`` takes and answers the same bodies (no
  attach: ids are looked up per entry).
* Binary (version 1, little-endian): a message header ``uint32 entries, uint32 version`` then per entry
  ``uint64 seq, uint32 handle, uint16 count, uint16 flags`` (:data:`FLAG_RESET`) and ``count × D``
  float32. The reply: the same message header, then per entry ``uint64 seq, uint64 next_seq,
  uint32 handle, uint16 count, uint16 status`` and ``count`` float32 progress values. ``status`` 0 is
  success; otherwise it is 1 + the error's index in :data:`ERROR_CODES` (the error table's order, which
  only grows), ``count`` is 0 and ``next_seq`` is where the stream continues (the expected seq). After the
  last entry, per entry in the same order: ``uint32 flags`` and the sections they name (the band, the
  remaining frames and their band, the remaining seconds: :data:`.binary.SECTIONS`, ``count`` frames
  each; an error's flags are 0). A reader that walks the entries and stops still reads every progress value.

An entry's error (a seq conflict, a bad value, an unknown handle) is answered in that entry; the other
entries of the message are processed as if it were absent. Only broken framing closes the connection.
"""

from __future__ import annotations

import functools
import struct
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from progress_stream.contract.binary import FLAG_RESET, pack_sections, read_sections, reply_flags, section_fields
from progress_stream.contract.replies import DESCRIBE, ErrorBody, Estimates, Interval
from progress_stream.contract.wire import MAX_TICK_ENTRIES, STREAM_ID, Fps

GATEWAY_SOCKET = "/v1/ws"
VERSION = 1
MESSAGE_HEADER = struct.Struct("<II")
ENTRY_HEADER = struct.Struct("<QIHH")
REPLY_ENTRY_HEADER = struct.Struct("<QQIHH")
#: What begins each entry's part of a reply's trailer: its flags.
TRAILER_FLAGS = struct.Struct("<I")
#: Binary status codes: 0 success, else 1 + the index of the error's code here. Append only: a client
#: reads a status by its place (a test holds this list to the error table).
ERROR_CODES: tuple[str, ...] = (
    "invalid_input",
    "empty",
    "wrong_dimension",
    "not_finite",
    "too_many_frames",
    "too_large",
    "unsupported_media_type",
    "unauthorized",
    "forbidden_origin",
    "not_found",
    "method_not_allowed",
    "request_timeout",
    "headers_too_large",
    "stream_not_found",
    "seq_conflict",
    "protocol_violation",
    "inference_failed",
    "too_many_streams",
    "overloaded",
    "shutting_down",
    "too_many_connections",
    "too_many_subscribers",
    "store_unreachable",
    "stream_unreadable",
    "internal_error",
    "wrong_host",
    "stream_id_taken",
    "stream_quota",
)
#: The most streams one connection attaches.
MAX_ATTACHED = MAX_TICK_ENTRIES

__all__ = ["FLAG_RESET"]


@functools.cache
def request_dtype(dim: int, count: int) -> np.dtype:
    """One binary request entry of ``count`` frames, as a record (uniform messages parse as one array)."""
    return np.dtype(
        [("seq", "<u8"), ("handle", "<u4"), ("count", "<u2"), ("flags", "<u2"), ("emb", "<f4", (count, dim))]
    )


@functools.cache
def reply_dtype(count: int) -> np.dtype:
    """One binary reply entry of ``count`` progress values, as a record."""
    return np.dtype(
        [
            ("seq", "<u8"),
            ("next_seq", "<u8"),
            ("handle", "<u4"),
            ("count", "<u2"),
            ("status", "<u2"),
            ("progress", "<f4", (count,)),
        ]
    )


@functools.cache
def trailer_dtype(count: int, flags: int) -> np.dtype:
    """One entry's part of a reply's trailer (``count`` frames, the sections ``flags`` names), as a record."""
    return np.dtype([("flags", "<u4"), *section_fields(count, flags)])


def entry_trailer(answers: Estimates | None) -> bytes:
    """One entry's part of a reply's trailer: its flags and sections (an error, None: flags 0 and nothing)."""
    if answers is None:
        return TRAILER_FLAGS.pack(0)
    flags = reply_flags(answers)
    return TRAILER_FLAGS.pack(flags) + pack_sections(answers, flags)


def encode_tick(handles: np.ndarray, seqs: np.ndarray, frames: np.ndarray, resets: np.ndarray | None = None) -> bytes:
    """A binary tick of one chunk per entry, every chunk of the same length: ``frames`` is (entries, count, D)."""
    entries, count, dim = frames.shape
    records = np.empty(entries, request_dtype(dim, count))
    records["seq"], records["handle"], records["count"] = seqs, handles, count
    records["flags"] = 0 if resets is None else np.where(resets, FLAG_RESET, 0)
    records["emb"] = frames
    return MESSAGE_HEADER.pack(entries, VERSION) + records.tobytes()


def encode_entries(entries: list[tuple[int, int, np.ndarray, bool]]) -> bytes:
    """A binary tick of any entries ``(handle, seq, frames (n, D), reset)``, of any lengths."""
    parts = [MESSAGE_HEADER.pack(len(entries), VERSION)]
    for handle, seq, frames, reset in entries:
        arr = np.ascontiguousarray(frames, dtype="<f4")
        parts += [ENTRY_HEADER.pack(seq, handle, len(arr), FLAG_RESET if reset else 0), arr.tobytes()]
    return b"".join(parts)


def decode_tick_reply(data: bytes) -> list[tuple[int, int, int, str | None, Estimates]]:
    """A binary tick's reply: per entry ``(handle, seq, next_seq, error code or None, answers)``; a reply
    without a trailer (an older server's) answers progress alone."""
    entries, _ = MESSAGE_HEADER.unpack_from(data)
    heads, offset = [], MESSAGE_HEADER.size
    for _ in range(entries):
        seq, next_seq, handle, count, status = REPLY_ENTRY_HEADER.unpack_from(data, offset)
        offset += REPLY_ENTRY_HEADER.size
        progress = np.frombuffer(data, "<f4", count, offset)
        offset += 4 * count
        heads.append((handle, seq, next_seq, ERROR_CODES[status - 1] if status else None, progress))
    out = []
    for handle, seq, next_seq, code, progress in heads:
        flags = 0
        if offset < len(data):
            (flags,) = TRAILER_FLAGS.unpack_from(data, offset)
            offset += TRAILER_FLAGS.size
        answers, offset = read_sections(data, offset, progress, flags)
        out.append((handle, seq, next_seq, code, answers))
    return out


GATEWAY = ConfigDict(extra="forbid")
StreamId = Annotated[str, Field(pattern=STREAM_ID.pattern)]


class Attach(BaseModel):
    """Attach streams to this connection (create or resume each); answered by :class:`Attached`."""

    model_config = GATEWAY
    attach: list[StreamId] = Field(min_length=1, max_length=MAX_ATTACHED)
    fps: Fps | None = Field(None, strict=True, description="the frame rate of every stream this message attaches")


class Detach(BaseModel):
    model_config = GATEWAY
    detach: list[StreamId] = Field(min_length=1, max_length=MAX_ATTACHED)


class AttachedStream(BaseModel):
    model_config = GATEWAY
    stream_id: str
    handle: int | None = Field(None, description="the stream's number in binary ticks (absent on an error)")
    next_seq: int | None = None
    error: ErrorBody | None = None


class Attached(BaseModel):
    model_config = GATEWAY
    attached: list[AttachedStream]


class Detached(BaseModel):
    model_config = GATEWAY
    detached: list[str]


class EntryResult(BaseModel):
    """One entry's answer in a tick's reply: each frame's answer and the next seq, or its error."""

    model_config = GATEWAY
    stream_id: str | None
    seq: int | None
    progress: list[float] | None = Field(None, description=DESCRIBE["progress"])
    band: list[Interval] | None = Field(None, description=DESCRIBE["band"])
    remaining_frames: list[float] | None = Field(None, description=DESCRIBE["remaining_frames"])
    remaining_band: list[Interval] | None = Field(None, description=DESCRIBE["remaining_band"])
    remaining_s: list[float] | None = Field(None, description=DESCRIBE["remaining_s"])
    next_seq: int | None = None
    error: ErrorBody | None = None


class TickReply(BaseModel):
    """The answer to a JSON tick (and to ``POST /v1/frames``): one result per entry, in order."""

    model_config = GATEWAY
    results: list[EntryResult]

    @staticmethod
    def failed(stream_id: str | None, seq: int | None, error: dict[str, Any]) -> dict[str, Any]:
        return {"stream_id": stream_id, "seq": seq, **error}
