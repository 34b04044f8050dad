"""The ASGI data plane: ``/v1/streams/{id}/ws`` through FastAPI, with ``PROGRESS_WS_PLANE=asgi``.

The default plane is the native one (:mod:`progress_stream.server.sockets.native`); both speak :mod:`progress_stream.server.sockets.session`.
A refused handshake (bad id, full table; the edge refuses a bad key or Origin) is answered like an
HTTP request: the status, ``Retry-After`` and JSON body of :data:`progress_stream.contract.errors.ERRORS`. After the
accept every error is an error message; the codes whose table entry has a close code then close
the socket with it (1009 for an oversized message comes from the server's ``ws_max_size``).
"""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from progress_stream.contract.errors import SeqConflict, ServiceError, error_body, error_headers
from progress_stream.contract.wire import WS_SUBPROTOCOL, check_stream_id
from progress_stream.engine.engine import Engine
from progress_stream.server.sockets.session import StreamSocket

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
    session = StreamSocket(engine, websocket.app.state.wire, stream)
    await asyncio.create_task(serve(websocket, session))


async def serve(websocket: WebSocket, session: StreamSocket) -> None:
    """Receive, submit, await, answer; strictly in order, until the client leaves or an error closes."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            started = time.perf_counter()
            binary = message.get("bytes") is not None
            try:
                try:
                    future = session.submit(message["bytes"] if binary else message.get("text") or "", binary)
                except SeqConflict as conflict:
                    future = await session.resubmit(conflict)
                progress = await future
            except ServiceError as exc:
                text, close = session.error(exc)
                await websocket.send_text(text.decode())
                if close is not None:
                    await websocket.close(close, exc.message[:120])
                    return
                continue
            if binary:
                await websocket.send_bytes(session.reply(progress, True))
            else:
                await websocket.send_text(session.reply(progress, False).decode())
            session.latency.observe(time.perf_counter() - started)
    except (WebSocketDisconnect, RuntimeError):
        return
