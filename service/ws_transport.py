"""WebSocket transport: ``/v1/streams/{id}/ws``, JSON text or compact binary messages, answered in order.

Each message is answered before the next is read, so answers come in order. Close codes: 1008
protocol violation or bad auth, 1009 message too large (the server's ``ws_max_size``), 1013 overload.
"""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.engine import Engine
from service.errors import (
    BadInput,
    EngineError,
    Overloaded,
    ProtocolViolation,
    StreamNotFound,
    error_body,
    most_specific,
)
from service.protocol import REQUEST_HEADER, binary_reply, check_stream_id, parse_binary, parse_frames
from service.settings import Settings
from service.streams import Stream

POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013
CLOSE_CODES = {
    ProtocolViolation: (POLICY_VIOLATION, "protocol violation: see the error message"),
    StreamNotFound: (POLICY_VIOLATION, "stream deleted or evicted"),
    Overloaded: (TRY_AGAIN_LATER, "overloaded: retry later"),
}

ws_router = APIRouter()


@ws_router.websocket("/v1/streams/{stream_id}/ws")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    settings: Settings = websocket.app.state.settings
    engine: Engine = websocket.app.state.engine
    if settings.api_key and websocket.headers.get("authorization") != f"Bearer {settings.api_key}":
        await websocket.close(POLICY_VIOLATION, "missing or wrong API key")  # before accept: HTTP 403
        return
    try:
        check_stream_id(stream_id)
    except BadInput as exc:
        await websocket.close(POLICY_VIOLATION, exc.message)
        return
    try:
        stream, _ = engine.create(stream_id)
    except Overloaded as exc:
        await websocket.close(TRY_AGAIN_LATER, exc.message)
        return
    await websocket.accept()
    # its own task: every wake-up (a message, a result) resumes a short coroutine chain instead of the
    # whole ASGI middleware stack above this handler
    await asyncio.create_task(Connection(websocket, engine, settings, stream).serve())


class Connection:
    """One socket of one stream: receive, submit, await, answer; strictly in order.

    The batcher advances a stream by at most one message per cycle, so reading the next message
    before answering this one would gain nothing; answering inline saves a task switch per message.
    """

    def __init__(self, websocket: WebSocket, engine: Engine, settings: Settings, stream: Stream):
        self.ws = websocket
        self.engine = engine
        self.stream = stream  # held, not looked up per message; a deleted or evicted one answers 1008
        self.dim = engine.runtime.embedding_dim
        self.max_frames = settings.max_frames_per_message
        self.latency = engine.metrics.request_seconds.labels("ws")
        self.seq: int | None = None

    async def serve(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                started = time.perf_counter()
                binary = message.get("bytes") is not None
                self.seq = None
                try:
                    future = self._submit(message, binary)
                    progress = await future
                except EngineError as exc:
                    if await self._error(self.seq, exc):
                        return
                    continue
                seq, next_seq = self.seq, self.stream.next_seq
                if binary:
                    await self.ws.send_bytes(binary_reply(seq, next_seq, progress))
                else:
                    reply = {"seq": seq, "progress": progress, "next_seq": next_seq}
                    await self.ws.send_text(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY).decode())
                self.latency.observe(time.perf_counter() - started)
        except (WebSocketDisconnect, RuntimeError):
            return

    def _submit(self, message: dict, binary: bool) -> asyncio.Future:
        """Parse and submit; ``self.seq`` is the message's seq as soon as it is known (errors carry it)."""
        if binary:
            data = message["bytes"]
            try:
                seq, frames, reset = parse_binary(data, self.dim, self.max_frames)
            except ValueError as exc:
                raise ProtocolViolation(str(exc)) from exc
            except EngineError:
                self.seq = REQUEST_HEADER.unpack_from(data)[0]  # the header parsed; its content did not
                raise
        else:
            try:
                obj = orjson.loads(message.get("text") or "")
            except orjson.JSONDecodeError as exc:
                raise ProtocolViolation(f"not JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise ProtocolViolation("a message must be a JSON object")
            try:
                seq, frames, reset = parse_frames(obj, self.dim, self.max_frames)
            except EngineError:
                self.seq = obj["seq"] if isinstance(obj.get("seq"), int) else None
                raise
        self.seq = seq
        return self.engine.submit(self.stream, seq, frames, reset)

    async def _error(self, seq: int | None, exc: EngineError) -> bool:
        """Send the error message; close the socket where the error calls for it (returns True then)."""
        self.engine.metrics.errors.labels(exc.code).inc()
        await self.ws.send_text(orjson.dumps({"seq": seq, **error_body(exc)}).decode())
        close = most_specific(CLOSE_CODES, exc)
        if close is not None:
            await self.ws.close(*close)
        return close is not None
