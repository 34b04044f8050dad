"""The native data plane: ``/v1/streams/{id}/ws`` on picows, in the same process, event loop and port.

uvicorn parses a handshake request like any other request. At the upgrade,
:class:`~progress_stream.server.http_protocol.HeaderDeadlineProtocol` hands the connection of a stream
socket to :meth:`NativePlane.upgrade` instead of uvicorn's WebSocket protocol: the same admission (Origin,
API key) and the same handshake (:func:`.session.open_socket`) as the ASGI route, then picows (Cython)
parses the frames and calls :class:`NativeSocket` once per message. There is no ASGI message, task or
coroutine per message: the result's future calls back, and the reply is written at once. Both planes
speak :mod:`.session`, so the protocol, its errors and its close codes are the same.

One public port: nothing changes for clients, nginx or compose. ``PROGRESS_WS_PLANE=asgi`` serves
the socket through FastAPI instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol

from progress_stream.contract.errors import MESSAGE_TOO_BIG, SeqConflict, ServiceError
from progress_stream.contract.wire import socket_stream_id
from progress_stream.server.answers import ErrorAnswer
from progress_stream.server.sockets.session import StreamSocket, open_socket, subprotocol
from progress_stream.server.wiring import Services

#: picows logs each connection at INFO; a server of thousands of sockets keeps only its warnings
PICOWS_LOG = logging.getLogger("picows.native")
PICOWS_LOG.setLevel(logging.WARNING)

#: Messages a client may send ahead of its answers before its socket stops being read (backpressure).
MAX_AHEAD = 64
#: A handshake that admission has passed must complete within this (picows then disconnects).
HANDSHAKE_TIMEOUT_S = 10.0


class NativePlane:
    """Takes over the stream sockets of one server; ``max_size`` is the largest message, as on the ASGI plane."""

    def __init__(self, services: Services, max_size: int):
        self.services = services
        self.max_size = max_size
        self._admitting: set[asyncio.Task] = set()

    def claims(self, path: str) -> bool:
        return socket_stream_id(path) is not None

    def upgrade(
        self,
        transport: asyncio.Transport,
        request: bytes,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
        connections: set,
    ) -> None:
        """Hand ``transport`` (whose upgrade ``request`` uvicorn has read) to picows once admitted;
        ``connections`` is uvicorn's set of open connections (it shuts each down at a stop)."""
        outcome: list[WSUpgradeResponseWithListener] = []
        protocol = WSProtocol(
            None,  # host and port: a client's
            None,  # path: a client's
            False,  # server side
            lambda _request: outcome[0],
            PICOWS_LOG,
            True,  # disconnect on an exception in a callback
            HANDSHAKE_TIMEOUT_S,
            False,  # no pings of our own: clients and proxies keep their connections alive
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # answer pings
            self.max_size,
            None,  # extra headers: a client's
            16 * 1024,
        )
        transport.pause_reading()  # nothing more is read until the handshake is answered
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        task = asyncio.get_running_loop().create_task(
            self._admit(transport, protocol, outcome, request, path, dict(headers), connections)
        )
        self._admitting.add(task)
        task.add_done_callback(self._admitting.discard)

    async def _admit(
        self,
        transport: asyncio.Transport,
        protocol: WSProtocol,
        outcome: list,
        request: bytes,
        path: str,
        headers: dict[bytes, bytes],
        connections: set,
    ) -> None:
        services = self.services
        try:
            tenant = services.admission.check(headers, path, websocket=True)
            session = await open_socket(services, socket_stream_id(path) or "", tenant)
        except Exception as exc:  # a refusal, or a bug: answered either way, never left to the handshake timeout
            outcome.append(WSUpgradeResponseWithListener(refusal(services.answers.error(exc)), None))
        else:
            chosen = subprotocol(headers.get(b"sec-websocket-protocol", b"").decode("latin-1"))
            listener = NativeSocket(session, connections, self.max_size)
            extra = {"Sec-WebSocket-Protocol": chosen} if chosen else None
            outcome.append(WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), listener))
        if transport.is_closing():  # the client left meanwhile
            return
        feed(protocol, request)
        transport.resume_reading()


def refusal(answer: ErrorAnswer) -> WSUpgradeResponse:
    """A refused handshake: the error's HTTP status, headers and JSON body (as on every route)."""
    headers = {"Content-Type": "application/json", **answer.headers}
    return WSUpgradeResponse.create_error_response(answer.status, answer.body, headers)


def feed(protocol: WSProtocol, data: bytes) -> None:
    """Give a buffered protocol bytes already read off its transport."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(-1)
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        protocol.buffer_updated(n)
        view = view[n:]


class NativeSocket(WSListener):
    """One stream socket on picows: each message submitted, its answer written from the future's
    callback, strictly in order (messages sent ahead wait here, up to :data:`MAX_AHEAD`)."""

    def __init__(self, session: StreamSocket, connections: set, max_size: int):
        self.session = session
        self.connections = connections
        self.max_size = max_size
        self.transport: WSTransport | None = None
        self.closed = False
        self.busy = False  # a message is being answered
        self.binary = False  # the format of that message
        self.started = 0.0
        self.ahead: deque[tuple[bytes | str, bool]] = deque()
        self.fragments: list[bytes] = []  # a fragmented message so far (its first frame's type in .binary_parts)
        self.fragments_size = 0
        self.binary_parts = False
        self._resubmits: set[asyncio.Task] = set()

    # --- picows callbacks ---------------------------------------------------------------------
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.connections.add(self)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.ahead.clear()
        self.connections.discard(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.BINARY or kind is WSMsgType.TEXT:
            binary = kind is WSMsgType.BINARY
            if self.fragments:
                self.close(WSCloseCode.PROTOCOL_ERROR, "a new message began before the fragmented one ended")
            elif not frame.fin:
                self.fragments, self.binary_parts = [frame.get_payload_as_bytes()], binary
                self.fragments_size = frame.payload_size
            elif binary:
                self.take(frame.get_payload_as_bytes(), True)
            else:
                self.take_text(frame.get_payload_as_bytes())
        elif kind is WSMsgType.CONTINUATION:
            self.continued(frame)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def shutdown(self) -> None:
        """uvicorn's stop: every open socket is told to reconnect elsewhere (1012), as on the ASGI plane."""
        if not self.closed and self.transport is not None:
            self.close(WSCloseCode.SERVICE_RESTART, "server shutting down")

    # --- messages -----------------------------------------------------------------------------
    def continued(self, frame: WSFrame) -> None:
        if not self.fragments:
            self.close(WSCloseCode.PROTOCOL_ERROR, "continuation frame without a message to continue")
            return
        self.fragments.append(frame.get_payload_as_bytes())
        self.fragments_size += frame.payload_size
        if self.fragments_size > self.max_size:
            self.close(WSCloseCode(MESSAGE_TOO_BIG), f"message exceeds {self.max_size} bytes")
        elif frame.fin:
            data, self.fragments = b"".join(self.fragments), []
            self.take(data, True) if self.binary_parts else self.take_text(data)

    def take_text(self, data: bytes) -> None:
        try:
            self.take(data.decode(), False)
        except UnicodeDecodeError:
            self.close(WSCloseCode.INVALID_TEXT, "a text message must be UTF-8")

    def take(self, data: bytes | str, binary: bool) -> None:
        if not self.busy:
            self.handle(data, binary)
            return
        self.ahead.append((data, binary))
        if len(self.ahead) == MAX_AHEAD:
            self.transport.underlying_transport.pause_reading()

    def handle(self, data: bytes | str, binary: bool) -> None:
        self.busy, self.binary, self.started = True, binary, time.perf_counter()
        try:
            future = self.session.submit(data, binary)
        except SeqConflict as conflict:  # a copy behind the client may catch up from the store (awaits)
            task = asyncio.get_running_loop().create_task(self.resubmit(conflict))
            self._resubmits.add(task)
            task.add_done_callback(self._resubmits.discard)
            return
        except Exception as exc:
            self.fail(exc)
            return
        future.add_done_callback(self.answer)

    async def resubmit(self, conflict: SeqConflict) -> None:
        try:
            future = await self.session.resubmit(conflict)
        except Exception as exc:
            self.fail(exc)
            return
        future.add_done_callback(self.answer)

    def answer(self, future: asyncio.Future) -> None:
        exc = future.exception()
        if self.closed:
            return
        if exc is not None:
            self.fail(exc)
            return
        binary = self.binary
        self.transport.send(WSMsgType.BINARY if binary else WSMsgType.TEXT, self.session.reply(future.result(), binary))
        self.session.latency.observe(time.perf_counter() - self.started)
        self.next()

    def fail(self, exc: BaseException) -> None:
        """Send the error message; close the socket where the error table says so (an unexpected error:
        ``internal_error``, 1011)."""
        if self.closed:
            return
        text, close = self.session.error(exc)
        self.transport.send(WSMsgType.TEXT, text)
        if close is not None:
            self.close(WSCloseCode(close), exc.message if isinstance(exc, ServiceError) else "internal error")
            return
        self.next()

    def next(self) -> None:
        self.busy = False
        if self.ahead:
            if len(self.ahead) == MAX_AHEAD:
                self.transport.underlying_transport.resume_reading()
            self.handle(*self.ahead.popleft())

    def close(self, code: WSCloseCode, reason: str) -> None:
        self.closed = True
        self.ahead.clear()
        self.transport.send_close(code, reason[:120].encode())
        self.transport.disconnect()
