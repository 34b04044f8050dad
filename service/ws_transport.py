"""WebSocket transport: ``/v1/streams/{id}/ws``, JSON text or compact binary messages, answered in order.

A reader submits each message as soon as it arrives (so a client may pipeline), a writer awaits
the results in arrival order and answers. Close codes: 1008 protocol violation or bad auth,
1009 message too large (enforced by the server's ``ws_max_size``), 1013 overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.engine import Engine
from service.errors import EngineError, Overloaded, ProtocolViolation, StreamNotFound, error_body
from service.protocol import STREAM_ID, binary_reply, parse_binary, parse_frames
from service.settings import Settings

POLICY_VIOLATION, TRY_AGAIN_LATER = 1008, 1013

ws_router = APIRouter()


@dataclass(slots=True)
class Reply:
    """One answer, in arrival order: a pending result, or a ready error (maybe closing the socket)."""

    seq: int | None
    started: float
    binary: bool = False
    future: asyncio.Future | None = None
    error: EngineError | None = None
    close: tuple[int, str] | None = None


@ws_router.websocket("/v1/streams/{stream_id}/ws")
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    settings: Settings = websocket.app.state.settings
    engine: Engine = websocket.app.state.engine
    if settings.api_key and websocket.headers.get("authorization") != f"Bearer {settings.api_key}":
        await websocket.close(POLICY_VIOLATION, "missing or wrong API key")  # before accept: HTTP 403
        return
    if not STREAM_ID.match(stream_id):
        await websocket.close(POLICY_VIOLATION, "stream_id must be 1-64 of [A-Za-z0-9_-]")
        return
    try:
        engine.create(stream_id)
    except Overloaded as exc:
        await websocket.close(TRY_AGAIN_LATER, exc.message)
        return
    await websocket.accept()
    await Connection(websocket, engine, settings, stream_id).serve()


class Connection:
    def __init__(self, websocket: WebSocket, engine: Engine, settings: Settings, stream_id: str):
        self.ws = websocket
        self.engine = engine
        self.stream_id = stream_id
        self.dim = engine.runtime.embedding_dim
        self.max_frames = settings.max_frames_per_message
        self.replies: asyncio.Queue[Reply | None] = asyncio.Queue(settings.ws_in_flight)
        self.latency = engine.metrics.request_seconds.labels("ws")

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            while not writer.done():
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                reply = self._handle(message)
                await self.replies.put(reply)
                if reply.close:
                    break
            await self.replies.put(None)
            await writer
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await writer

    def _handle(self, message: dict) -> Reply:
        started = time.perf_counter()
        data = message.get("bytes")
        binary = data is not None
        seq = None
        try:
            if binary:
                try:
                    seq, frames, reset = parse_binary(data, self.dim, self.max_frames)
                except ValueError as exc:
                    raise ProtocolViolation(str(exc)) from exc
            else:
                try:
                    obj = orjson.loads(message.get("text") or "")
                except orjson.JSONDecodeError as exc:
                    raise ProtocolViolation(f"not JSON: {exc}") from exc
                if not isinstance(obj, dict):
                    raise ProtocolViolation("a message must be a JSON object")
                if isinstance(obj.get("seq"), int):
                    seq = obj["seq"]
                seq, frames, reset = parse_frames(obj, self.dim, self.max_frames)
            return Reply(seq, started, binary, future=self.engine.submit(self.stream_id, seq, frames, reset))
        except ProtocolViolation as exc:
            return Reply(seq, started, error=exc, close=(POLICY_VIOLATION, exc.message[:120]))
        except Overloaded as exc:
            return Reply(seq, started, error=exc, close=(TRY_AGAIN_LATER, exc.message[:120]))
        except StreamNotFound as exc:
            return Reply(seq, started, error=exc, close=(POLICY_VIOLATION, "stream deleted or evicted"))
        except EngineError as exc:
            return Reply(seq, started, error=exc)

    async def _write(self) -> None:
        while (reply := await self.replies.get()) is not None:
            if reply.future is not None:
                try:
                    progress = await asyncio.shield(reply.future)
                except EngineError as exc:
                    reply.error = exc
                else:
                    stream = self.engine.table.streams.get(self.stream_id)
                    next_seq = stream.next_seq if stream else reply.seq + len(progress)
                    if reply.binary:
                        await self.ws.send_bytes(binary_reply(reply.seq, next_seq, progress))
                    else:
                        await self.ws.send_text(
                            orjson.dumps(
                                {"seq": reply.seq, "progress": progress, "next_seq": next_seq},
                                option=orjson.OPT_SERIALIZE_NUMPY,
                            ).decode()
                        )
                    self.latency.observe(time.perf_counter() - reply.started)
                    continue
            self.engine.metrics.errors.labels(reply.error.code).inc()
            await self.ws.send_text(orjson.dumps({"seq": reply.seq, **error_body(reply.error)}).decode())
            if reply.close:
                await self.ws.close(*reply.close)
                return
