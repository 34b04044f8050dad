"""WebSocket transport: ``/v1/streams/{id}/ws``, JSON text or compact binary messages, answered in order.

A refused handshake (bad id, full table; the edge refuses a bad key or Origin) is answered like an
HTTP request: the status, ``Retry-After`` and JSON body of :data:`service.errors.ERRORS`. After the
accept every error is an error message; the codes whose table entry has a close code then close
the socket with it (1009 for an oversized message comes from the server's ``ws_max_size``).
"""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from service.engine import Engine
from service.errors import BadInput, ProtocolViolation, SeqConflict, ServiceError, error_body, error_headers
from service.protocol import REQUEST_HEADER, WS_SUBPROTOCOL, Wire, check_stream_id
from service.protocol import binary_reply as encode_binary_reply
from service.streams import Stream

ws_router = APIRouter()


async def deny(websocket: WebSocket, exc: ServiceError) -> None:
    """Refuse the handshake with the error's HTTP status and body."""
    websocket.app.state.engine.metrics.errors.labels(exc.code).inc()
    body = orjson.dumps(error_body(exc))
    await websocket.send_denial_response(Response(body, exc.spec.status, error_headers(exc.code), "application/json"))


@ws_router.websocket("/v1/streams/{stream_id}/ws")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    engine: Engine = websocket.app.state.engine
    try:
        stream, _ = await engine.open(check_stream_id(stream_id))
    except ServiceError as exc:
        await deny(websocket, exc)
        return
    # a browser offers the subprotocol (its key rides beside it) and fails unless one is selected
    await websocket.accept(WS_SUBPROTOCOL if WS_SUBPROTOCOL in websocket.scope.get("subprotocols", []) else None)
    # its own task: every wake-up (a message, a result) resumes a short coroutine chain instead of the
    # whole ASGI middleware stack above this handler
    await asyncio.create_task(Connection(websocket, engine, websocket.app.state.wire, stream).serve())


class Connection:
    """One socket of one stream: receive, submit, await, answer; strictly in order.

    The batcher advances a stream by at most one message per cycle, so reading the next message
    before answering this one would gain nothing; answering inline saves a task switch per message.
    """

    def __init__(self, websocket: WebSocket, engine: Engine, wire: Wire, stream: Stream):
        self.ws = websocket
        self.engine = engine
        self.wire = wire
        self.stream = stream  # held, not looked up per message; a deleted or evicted one answers 1008
        self.latency = engine.metrics.request_seconds.labels("ws")
        self.seq: int | None = None
        self.conflicted: tuple = ()  # (seq, frames, reset) of a message that just met a seq conflict

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
                    try:
                        future = self._submit(message, binary)
                    except SeqConflict as conflict:  # a copy behind the client may catch up from the store
                        future = await self.engine.resubmit(self.stream, conflict, *self.conflicted)
                    progress = await future
                except ServiceError as exc:
                    if await self._error(self.seq, exc):
                        return
                    continue
                seq, next_seq = self.seq, self.stream.next_seq
                if binary:
                    await self.ws.send_bytes(encode_binary_reply(seq, next_seq, progress))
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
                seq, frames, reset = self.wire.parse_binary(data)
            except BadInput:
                self.seq = REQUEST_HEADER.unpack_from(data)[0]  # the header parsed; its content did not
                raise
        else:
            text = message.get("text") or ""
            try:
                seq, frames, reset = self.wire.parse_frames(text)
            except BadInput as exc:
                if exc.field == "body":  # not a JSON object at all: the framing is broken
                    raise ProtocolViolation(exc.message) from None
                self.seq = seq_of(text)
                raise
        self.seq = seq
        try:
            return self.engine.submit(self.stream, seq, frames, reset)
        except SeqConflict:
            self.conflicted = (seq, frames, reset)  # kept only on this path: the hot one allocates nothing
            raise

    async def _error(self, seq: int | None, exc: ServiceError) -> bool:
        """Send the error message; close the socket where the table says so (returns True then)."""
        self.engine.metrics.errors.labels(exc.code).inc()
        await self.ws.send_text(orjson.dumps({"seq": seq, **error_body(exc)}).decode())
        close = exc.spec.ws_close
        if close is not None:
            await self.ws.close(close, exc.message[:120])
        return close is not None


def seq_of(text: str) -> int | None:
    """The seq of a message that failed validation, if it has a usable one (for its error message)."""
    try:
        seq = orjson.loads(text).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
