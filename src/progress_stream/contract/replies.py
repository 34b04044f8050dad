"""Every reply of the API as a pydantic model: the one schema of what the server answers.

Routes declare these as their response models (so ``/openapi.json`` describes every 2xx), the client
reads them, and the server builds each answer from them. The replies on the per-frame path (frames,
socket replies, board rows) are encoded by the ``encode``/``row`` functions beside their model: plain
dicts with exactly the model's fields, written by orjson, because a model instance per frame would cost
more than the rest of the answer; a test holds each encoder to its model.

What a frame's answer holds is :class:`Estimates`: the engine computes it, every encoder writes it (the
JSON fields of :func:`per_frame`, the binary sections of :mod:`.binary`) and the client reads it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field

from progress_stream.contract.cell import LOW_END_WEIGHT, MIN_PROGRESS, remaining_band, remaining_frames
from progress_stream.contract.errors import BadInput, SeqConflict, ServiceError

REPLY = ConfigDict(extra="forbid")
NUMPY = orjson.OPT_SERIALIZE_NUMPY


@dataclass(slots=True)
class Estimates:
    """What is answered of each of ``n`` frames: its progress ``(n,)``, the interval around it ``(n, 2)``
    (None for a version 1 cell, which has no band), the frames left in the action ``(n,)`` and their interval
    ``(n, 2)`` (None without a band), and those frames in seconds ``(n,)`` (None for a stream without a frame
    rate). A reply from a server that predates a field reads it as None.

    It reads as its progress where an array is expected (``np.asarray``, ``len``), so code that took the
    progress array before goes on working."""

    progress: np.ndarray
    band: np.ndarray | None = None
    remaining_frames: np.ndarray | None = None
    remaining_band: np.ndarray | None = None
    remaining_s: np.ndarray | None = None

    @classmethod
    def at(
        cls, progress: np.ndarray, band: np.ndarray | None, seen: np.ndarray, fps: float | np.ndarray | None = None
    ) -> Estimates:
        """The answers of frames at ``progress`` (and ``band``), each the ``seen``-th frame of its action (1-based),
        of a stream at ``fps`` frames a second (None: not known). The time to finish is the cell contract's
        (:func:`~progress_stream.contract.cell.remaining_frames`); any shape, ``fps`` broadcast over it."""
        remaining = remaining_frames(progress, seen, band)
        return cls(
            progress,
            band,
            remaining,
            None if band is None else remaining_band(band, seen),
            None if fps is None else remaining / np.asarray(fps, np.float32),
        )

    def untimed(self) -> Estimates:
        """The same answers without seconds (a stream without a frame rate)."""
        return self if self.remaining_s is None else replace(self, remaining_s=None)

    def __len__(self) -> int:
        return len(self.progress)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return np.array(self.progress, dtype, copy=copy)

    def __getitem__(self, index: Any) -> Estimates:
        """The same index of every array: ``e[i, :n]`` of a batch's answers, ``e[lo:hi]`` of a chunk's. Once per
        row of every cycle, so written out (a generator over the fields cost twice as much)."""
        band, low_high, seconds = self.band, self.remaining_band, self.remaining_s
        return Estimates(
            self.progress[index],
            None if band is None else band[index],
            None if self.remaining_frames is None else self.remaining_frames[index],
            None if low_high is None else low_high[index],
            None if seconds is None else seconds[index],
        )

    def arrays(self) -> tuple[np.ndarray | None, ...]:
        return (self.progress, self.band, self.remaining_frames, self.remaining_band, self.remaining_s)

    @staticmethod
    def join(parts: Sequence[Estimates]) -> Estimates:
        """Consecutive runs of frames as one; a field some part lacks is None."""
        columns = zip(*(part.arrays() for part in parts), strict=True)
        return Estimates(*(None if any(a is None for a in c) else np.concatenate(c) for c in columns))

    @classmethod
    def read(cls, body: Mapping[str, Any]) -> Estimates:
        """From a JSON answer's fields (:func:`per_frame`); a field that is absent or null is None."""
        return cls(*(None if body.get(name) is None else np.asarray(body[name], np.float32) for name in PER_FRAME))


#: The per-frame fields of every answer, in the order of :class:`Estimates`.
PER_FRAME = ("progress", "band", "remaining_frames", "remaining_band", "remaining_s")


def per_frame(answers: Estimates) -> dict[str, Any]:
    """The JSON fields of ``answers`` (numpy arrays, for orjson): every per-frame reply carries these."""
    return dict(zip(PER_FRAME, answers.arrays(), strict=True))


def stream_answers(
    stream_ids: Sequence[str], seqs: Sequence[int], answers: Estimates, next_seqs: Sequence[int]
) -> list[dict[str, Any]]:
    """The JSON answers of chunks of several streams, ``answers`` of shape ``(chunks, k)``: a tick answered as one
    block builds its thousand entries column by column (one call per entry cost three times as much)."""
    n = len(seqs)
    columns = [[None] * n if a is None else list(a) for a in answers.arrays()]
    return [
        {
            "stream_id": stream_id,
            "seq": seq,
            "progress": progress,  # the keys of PER_FRAME, in its order (a test holds them to it)
            "band": band,
            "remaining_frames": left,
            "remaining_band": left_band,
            "remaining_s": seconds,
            "next_seq": next_seq,
        }
        for stream_id, seq, progress, band, left, left_band, seconds, next_seq in zip(
            stream_ids, seqs, *columns, next_seqs, strict=True
        )
    ]


Interval = Annotated[list[float], Field(min_length=2, max_length=2)]
DESCRIBE = {
    "progress": "each frame's progress, in [0, 1]",
    "band": "each frame's interval [lo, hi] around its progress, at the model's nominal coverage (the model's "
    "`coverage`); null for a model without a band",
    "remaining_frames": "frames left in the action after each frame: seen × (1 − q) / q, seen being the frames "
    f"into the action up to it and q its progress moved {LOW_END_WEIGHT:g} of the way to its band's low end (the "
    f"progress itself without a band; q counts as at least {MIN_PROGRESS:g})",
    "remaining_band": "each frame's interval [low, high] of the frames left, from its band; null for a model "
    "without a band",
    "remaining_s": "remaining_frames in seconds at the stream's frame rate; null for a stream opened without fps",
    "coverage": "the nominal coverage of every answer's band (0.8: 8 in 10 frames within it); null for a model "
    "without a band",
    "fps": "the stream's frame rate, which turns remaining frames into remaining_s; null if none was given",
}


class PerFrame(BaseModel):
    """The answer of each frame of a message, in arrays of one entry per frame."""

    model_config = REPLY
    progress: list[float] = Field(description=DESCRIBE["progress"])
    band: list[Interval] | None = Field(description=DESCRIBE["band"])
    remaining_frames: list[float] = Field(description=DESCRIBE["remaining_frames"])
    remaining_band: list[Interval] | None = Field(description=DESCRIBE["remaining_band"])
    remaining_s: list[float] | None = Field(description=DESCRIBE["remaining_s"])


class ModelSummary(BaseModel):
    """The served model, as a stream's creation reports it."""

    model_config = REPLY
    embedding_dim: int
    hidden_dim: int
    position_encoding: str
    format_version: str
    checkpoint_sha256: str
    providers: str = Field(description="the onnxruntime execution providers, comma-separated")
    coverage: float | None = Field(description=DESCRIBE["coverage"])


class StreamCreated(BaseModel):
    model_config = REPLY
    stream_id: str
    next_seq: int
    fps: float | None = Field(description=DESCRIBE["fps"])
    model: ModelSummary


class StreamInfo(BaseModel):
    """``GET /v1/streams/{id}``: where a stream stands."""

    model_config = REPLY
    stream_id: str
    next_seq: int = Field(description="frames accepted: the seq the next message must carry")
    processed_seq: int = Field(description="frames processed by the model")
    step: int = Field(description="frames into the current action")
    pending_frames: int = Field(description="accepted, not yet processed")
    fps: float | None = Field(description=DESCRIBE["fps"])
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


class FramesReply(PerFrame):
    """``POST /v1/streams/{id}/frames``: each frame's answer."""

    stream_id: str
    seq: int
    next_seq: int

    @staticmethod
    def encode(stream_id: str, seq: int, answers: Estimates, next_seq: int) -> bytes:
        return orjson.dumps(stream_answers([stream_id], [seq], answers[None], [next_seq])[0], option=NUMPY)


class SocketReply(PerFrame):
    """A JSON frames message's answer on a stream's WebSocket."""

    seq: int
    next_seq: int

    @staticmethod
    def encode(seq: int, answers: Estimates, next_seq: int) -> bytes:
        return orjson.dumps({"seq": seq, **per_frame(answers), "next_seq": next_seq}, option=NUMPY)


class ProgressReply(PerFrame):
    """``POST /v1/progress``: every frame of one action (no stream, so no frame rate: ``remaining_s`` is null)."""

    @staticmethod
    def encode(answers: Estimates) -> bytes:
        return orjson.dumps(per_frame(answers), option=NUMPY)


class ModelInfo(BaseModel):
    """``GET /v1/model``: the cell's file, providers and every metadata entry the exporter wrote."""

    model_config = ConfigDict(extra="allow")
    path: str
    providers: list[str]
    format_version: str
    embedding_dim: str
    hidden_dim: str
    position_encoding: str
    coverage: float | None = Field(description=DESCRIBE["coverage"])


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
