"""Transport-free client logic: the replay log, message encoding, and what to resend after a 409."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from progress_stream.contract.errors import ERRORS, Action
from progress_stream.contract.replies import Estimates

RETRY_DELAY = 0.2  # seconds before re-sending after a transport error (the seq makes it safe)
TIMEOUT = 10.0  # every transport's default wait, in seconds, for a connection, a handshake or a reply


@dataclass(frozen=True)
class Chunk:
    seq: int
    frames: np.ndarray
    reset: bool = False

    @property
    def end(self) -> int:
        return self.seq + len(self.frames)


class ServerError(RuntimeError):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body

    @classmethod
    def of(cls, body: Any) -> ServerError:
        """An error answered in a WebSocket message (no HTTP status of its own): the status its code has in the
        error table (400 for a body without a known code)."""
        error = body.get("error") if isinstance(body, dict) else None
        spec = ERRORS.get(error.get("code")) if isinstance(error, dict) else None
        return cls(400 if spec is None else spec.status, body)


#: The statuses of a chunk refused for what it holds (its values, its shape, its size): never taken by the server.
REFUSED_CHUNK = (413, 422)


class SeqError(RuntimeError):
    """The server can no longer replay what the client needs (history too short on both sides)."""


class ReplayLog:
    """The last ``capacity`` frames sent, by seq, so a client can resume from any ``expected_seq``."""

    def __init__(self, capacity: int = 4096):
        self.capacity = capacity
        self.replayed = 0  # frames sent again after a 409 (a restart or a takeover)
        self._chunks: deque[Chunk] = deque()
        self._frames = 0

    def take_back(self, chunk: Chunk) -> None:
        """Forget ``chunk``, the last recorded (the server refused it)."""
        if self._chunks and self._chunks[-1] is chunk:
            self._frames -= len(self._chunks.pop().frames)

    def record(self, chunk: Chunk) -> None:
        self._chunks.append(chunk)
        self._frames += len(chunk.frames)
        while self._frames - len(self._chunks[0].frames) >= self.capacity:
            self._frames -= len(self._chunks.popleft().frames)

    def between(self, start: int, stop: int) -> list[Chunk]:
        """The frames ``start .. stop-1`` as chunks (a chunk cut at ``start`` loses its reset: it already ran)."""
        if not self._chunks or start < self._chunks[0].seq:
            raise SeqError(f"frames from seq {start} are no longer in the client's replay log")
        out = []
        for c in self._chunks:
            if c.end <= start or c.seq >= stop:
                continue
            lo, hi = max(start, c.seq), min(stop, c.end)
            out.append(Chunk(lo, c.frames[lo - c.seq : hi - c.seq], c.reset and lo == c.seq))
        return out


def resend_plan(log: ReplayLog, chunk: Chunk, expected_seq: int) -> list[Chunk]:
    """After a 409 for ``chunk``: the chunks to send, in order, to bring the server to ``chunk.end``."""
    if expected_seq >= chunk.end:
        raise SeqError(f"server is at seq {expected_seq}, past this chunk ({chunk.seq}..{chunk.end - 1})")
    if expected_seq > chunk.seq:  # a restored server holds part of it: ask the retained head, send the tail
        cut = expected_seq - chunk.seq
        return [Chunk(chunk.seq, chunk.frames[:cut], chunk.reset), Chunk(expected_seq, chunk.frames[cut:])]
    return [*log.between(expected_seq, chunk.seq), chunk]


def frames_json(chunk: Chunk) -> dict:
    """A chunk's JSON fields, its embeddings a float32 array (for :func:`json_bytes`)."""
    return {"seq": chunk.seq, "embeddings": np.ascontiguousarray(chunk.frames, np.float32), "reset": chunk.reset}


def json_bytes(body: Any) -> bytes:
    """``body`` as JSON, a float32 array's values each in the shortest form that reads back as the same float32:
    about half the bytes (and the server's parsing) of the same values as Python floats."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def stitch(chunk: Chunk, sent: list[Chunk], results: list[Estimates]) -> Estimates:
    """The answers of ``chunk``'s frames out of those of the chunks actually sent (in order, they cover it)."""
    parts = []
    for c, r in zip(sent, results, strict=True):
        lo, hi = max(c.seq, chunk.seq), min(c.end, chunk.end)
        if lo < hi:
            parts.append(r[lo - c.seq : hi - c.seq])
    return parts[0] if len(parts) == 1 else Estimates.join(parts)


#: ("ok", Estimates) | ("conflict", expected_seq) | ("wait", seconds) | ("refused", ServerError): a gateway's entry
Outcome = tuple[str, Any]


def error_outcome(body: Any, retry_after: str | None = None) -> Outcome | None:
    """What to do about an error answer, by its code's entry in the service's error table;
    ``None`` when resending cannot help (the caller raises)."""
    error = body.get("error") if isinstance(body, dict) else None
    spec = ERRORS.get(error.get("code")) if isinstance(error, dict) else None
    if spec is None:
        return None
    if spec.action is Action.RESUME:
        return "conflict", error["expected_seq"]
    if spec.action in (Action.WAIT, Action.RECONNECT):
        return "wait", float(retry_after or spec.retry_after or RETRY_DELAY)
    return None


def exchange(log: ReplayLog, chunk: Chunk, attempts: int = 50) -> Generator[Chunk, Outcome, Estimates]:
    """The retry protocol of every transport, as a generator: it yields the next chunk to send and is
    sent back that send's outcome; it returns the answers of ``chunk``'s frames. Drivers only do the I/O."""
    pending, sent, results = [chunk], [], []
    for _ in range(attempts):
        if not pending:
            break
        kind, value = yield pending[0]
        if kind == "ok":
            sent.append(pending.pop(0))
            results.append(value)
        elif kind == "conflict":
            pending, sent, results = resend_plan(log, chunk, value), [], []
            log.replayed += max(0, chunk.seq - value)
    if pending:
        raise SeqError(f"gave up sending seq {chunk.seq} after {attempts} attempts")
    return stitch(chunk, sent, results)


def chunk_frames(embeddings: Any) -> np.ndarray:
    """``embeddings`` ``(frames, dim)`` as a float32 copy: the replay log must keep what was sent, and a capture
    loop may refill its buffer for the next frame."""
    frames = np.array(embeddings, np.float32, order="C")
    if frames.ndim != 2:
        raise ValueError(f"embeddings must be (frames, dim), not of shape {frames.shape}: one frame is x[None]")
    return frames


class SessionState:
    """What every session keeps: its stream id, the next seq to send and the replay log.

    Without an id the client makes a random 128-bit one, so the id is known before the first request
    and every request (creation included) names it in its path, where a proxy can route by it.
    """

    def __init__(self, stream_id: str | None, history: int):
        self.stream_id = stream_id or secrets.token_hex(16)
        self.next_seq = 0
        self.log = ReplayLog(history)

    def new_chunk(self, embeddings: Any, reset: bool) -> Chunk:
        """The next chunk, of :func:`chunk_frames`."""
        return self.next_chunk(chunk_frames(embeddings), reset)

    def next_chunk(self, frames: np.ndarray, reset: bool) -> Chunk:
        """The next chunk of ``frames`` (already :func:`chunk_frames`'s copy), recorded in the log."""
        chunk = Chunk(self.next_seq, frames, reset)
        self.log.record(chunk)
        self.next_seq = chunk.end
        return chunk

    def refused(self, chunk: Chunk, error: ServerError) -> None:
        """``chunk``, the last one, ended in ``error``: if the server refused it for what it holds, it never took
        it, so it leaves the log and the next chunk takes its seq (else every later chunk would replay it)."""
        if error.status in REFUSED_CHUNK and self.next_seq == chunk.end:
            self.log.take_back(chunk)
            self.next_seq = chunk.seq

    @contextmanager
    def sending(self, chunk: Chunk) -> Iterator[None]:
        """Around ``chunk``'s exchange: see :meth:`refused`."""
        try:
            yield
        except ServerError as error:
            self.refused(chunk, error)
            raise


def waited(result: Outcome) -> float:
    """How long to wait before the next send: an outcome's ``("wait", seconds)``, else none."""
    return result[1] if result[0] == "wait" else 0.0


def drive(
    steps: Generator[Any, Any, Any], transact: Callable[[Any], Any], wait: Callable[[Any], float] = waited
) -> Any:
    """Run a retry protocol over a blocking transport: ``transact`` sends what ``steps`` yields and returns
    its outcome (one chunk's, or a tick's list of them, with ``wait`` saying how long to pause)."""
    request = next(steps)
    while True:
        result = transact(request)
        if delay := wait(result):
            time.sleep(delay)
        try:
            request = steps.send(result)
        except StopIteration as done:
            return done.value


async def drive_async(
    steps: Generator[Any, Any, Any], transact: Callable[[Any], Awaitable[Any]], wait: Callable[[Any], float] = waited
) -> Any:
    """The same over an asyncio transport."""
    request = next(steps)
    while True:
        result = await transact(request)
        if delay := wait(result):
            await asyncio.sleep(delay)
        try:
            request = steps.send(result)
        except StopIteration as done:
            return done.value
