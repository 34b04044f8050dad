"""The ASGI data plane: a stream's WebSocket through FastAPI, with ``PROGRESS_WS_PLANE=asgi``.

The default plane is the native one (:mod:`.native`); both speak :mod:`.session`. A refused handshake
(bad id, full table; the edge refuses a bad key or Origin) is answered like an HTTP request: the status,
``Retry-After`` and JSON body of the error table. After the accept every error is an error message; the
codes whose table entry has a close code then close the socket with it (1009 for an oversized message
comes from the server's ``ws_max_size``); an unexpected error answers ``internal_error`` and closes 1011,
as on the native plane.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.http11 import Request

from progress_stream.contract.errors import MESSAGE_TOO_BIG, SeqConflict, ServiceError
from progress_stream.contract.gateway import GATEWAY_SOCKET
from progress_stream.contract.wire import STREAM_SOCKET
from progress_stream.server.edge import TENANT
from progress_stream.server.sockets.gateway import GatewaySocket
from progress_stream.server.sockets.session import StreamSocket, max_fragments, open_socket, subprotocol
from progress_stream.server.wiring import Services

ws_router = APIRouter()
gateway_router = APIRouter()


class SocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol (websockets' sans-I/O parser, uvicorn's ``ws="websockets-sansio"``)
    with the native plane's bounds: a message is at most a tick (uvicorn's ``ws_max_size``) on the gateway's
    socket and :attr:`stream_max_size` bytes on a stream's, in a bounded number of frames; past either,
    close 1009. :func:`socket_protocol` makes the class for one server."""

    stream_max_size: int

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.response.status_code == 101 and self.scope["path"] != GATEWAY_SOCKET:
            self.conn.max_message_size = self.stream_max_size

    def handle_cont(self, event: Frame) -> None:
        if self.close_sent:
            return
        limit = max_fragments(self.conn.max_message_size)
        if len(self.frames) >= limit:
            self.conn.send_close(MESSAGE_TOO_BIG, f"message in more than {limit} frames")
            self.handle_parser_exception()  # sends the close, tells the app, closes the transport
            return
        super().handle_cont(event)


def socket_protocol(stream_max_size: int) -> type[SocketProtocol]:
    """The protocol class for uvicorn's ``ws=``, a stream socket's messages bounded to ``stream_max_size``."""
    return type("SocketProtocol", (SocketProtocol,), {"stream_max_size": stream_max_size})


@ws_router.websocket(STREAM_SOCKET)
async def stream_socket(websocket: WebSocket, stream_id: str) -> None:
    services: Services = websocket.app.state.services
    try:
        query = websocket.scope.get("query_string", b"").decode("latin-1")
        session = await open_socket(services, stream_id, websocket.scope[TENANT], query)
    except Exception as exc:  # a refusal, or a bug: answered in the error shape either way, as on the native plane
        await websocket.send_denial_response(services.answers.error(exc).response())
        return
    await websocket.accept(subprotocol(",".join(websocket.scope.get("subprotocols", []))))
    # its own task: every wake-up (a message, a result) resumes a short coroutine chain instead of the
    # whole ASGI middleware stack above this handler
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
            data = message["bytes"] if binary else message.get("text") or ""
            try:
                try:
                    future = session.submit(data, binary)
                except SeqConflict as conflict:
                    future = await session.resubmit(conflict)
                answers = await future
            except Exception as exc:  # a bug too is answered (internal_error, 1011), never a silent socket
                text, close = session.error(exc)
                await websocket.send_text(text.decode())
                if close is not None:
                    reason = exc.message if isinstance(exc, ServiceError) else "internal error"
                    await websocket.close(close, reason[:120])
                    return
                continue
            if binary:
                await websocket.send_bytes(session.reply(answers, True))
            else:
                await websocket.send_text(session.reply(answers, False).decode())
            session.latency.observe(time.perf_counter() - started)
    except (WebSocketDisconnect, RuntimeError):
        return


@gateway_router.websocket(GATEWAY_SOCKET)
async def gateway_socket(websocket: WebSocket) -> None:
    """Many streams on one socket (the edge already admitted it): each message answered in order."""
    services: Services = websocket.app.state.services
    await websocket.accept(subprotocol(",".join(websocket.scope.get("subprotocols", []))))
    gateway = GatewaySocket(services, websocket.scope[TENANT])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            binary, started = message.get("bytes") is not None, time.perf_counter()
            try:
                reply = await gateway.answer(message["bytes"] if binary else message.get("text") or "", binary)
            except Exception as exc:  # broken framing (or a bug): the errors that close a gateway
                text, close = gateway.error(exc)
                await websocket.send_text(text.decode())
                await websocket.close(close, exc.message[:120] if isinstance(exc, ServiceError) else "internal error")
                return
            if binary:
                await websocket.send_bytes(reply)
            else:
                await websocket.send_text(reply.decode())
            gateway.latency.observe(time.perf_counter() - started)
    except (WebSocketDisconnect, RuntimeError):
        return
