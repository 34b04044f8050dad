"""The native data plane: ``/v1/streams/{id}/ws`` and the gateway's ``/v1/ws`` on picows, in the same
process, event loop and port.

uvicorn parses a handshake request like any other request. At the upgrade,
:class:`~progress_stream.server.http_protocol.HeaderDeadlineProtocol` hands the connection of a stream
socket to :meth:`NativePlane.upgrade` instead of uvicorn's WebSocket protocol: the same admission (Origin,
API key) and the same handshake (:func:`.session.open_socket`) as the ASGI route, then picows (Cython)
parses the frames and calls :class:`NativeSocket` once per message. There is no ASGI message, task or
coroutine per message: the result's future calls back, and the reply is written at once. Both planes
speak :mod:`.session` (and :mod:`.gateway`), so the protocol, its errors and its close codes are the same.
A gateway message is answered by a task (its answer may wait on the shared store), still one per message.

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
from progress_stream.contract.gateway import GATEWAY_SOCKET
from progress_stream.contract.wire import socket_stream_id
from progress_stream.server.answers import ErrorAnswer
from progress_stream.server.sockets.gateway import GatewaySocket, NativeGateway
from progress_stream.server.sockets.session import StreamSocket, max_fragments, open_socket, subprotocol
from progress_stream.server.wiring import Services

#: picows logs each connection at INFO; a server of thousands of sockets keeps only its warnings
PICOWS_LOG = logging.getLogger("picows.native")
PICOWS_LOG.setLevel(logging.WARNING)

#: Messages a client may send ahead of its answers before its socket stops being read (backpressure).
MAX_AHEAD = 64
#: Bytes of replies a client has not taken yet past which its socket stops being read (the transport's
#: high-water mark); it is read again once they drain below a quarter of this.
WRITE_HIGH_WATER = 64 * 1024
#: A handshake that admission has passed must complete within this (picows then disconnects).
HANDSHAKE_TIMEOUT_S = 10.0


class NativePlane:
    """Takes over the stream sockets and gateways of one server; ``max_size`` is the largest message of a stream
    socket, as on the ASGI plane, ``gateway_max_size`` the largest tick."""

    def __init__(self, services: Services, max_size: int, gateway_max_size: int):
        self.services = services
        self.max_size = max_size
        self.gateway_max_size = gateway_max_size
        # the ASGI plane's settings (uvicorn's ws_ping_interval and ws_ping_timeout): a dead peer is
        # noticed on either plane, and its stream and read buffer let go
        self.ping_interval = services.settings.ws_ping_interval_s
        self.ping_timeout = services.settings.ws_ping_timeout_s
        # a client that leaves its replies unread this long is as good as one that does not answer a ping
        self.write_timeout = services.settings.ws_ping_timeout_s
        self._admitting: set[asyncio.Task] = set()

    @property
    def admitting(self) -> int:
        """Handshakes under way (each holds a connection that no protocol counts yet)."""
        return len(self._admitting)

    def claims(self, path: str) -> bool:
        return path == GATEWAY_SOCKET or socket_stream_id(path) is not None

    def upgrade(
        self,
        transport: asyncio.Transport,
        request: bytes,
        path: str,
        query: str,
        headers: Iterable[tuple[bytes, bytes]],
        connections: set,
    ) -> None:
        """Hand ``transport`` (whose upgrade ``request`` uvicorn has read, for ``path?query``) to picows once
        admitted; ``connections`` is uvicorn's set of open connections (it shuts each down at a stop)."""
        outcome: list[WSUpgradeResponseWithListener] = []
        max_size = self.gateway_max_size if path == GATEWAY_SOCKET else self.max_size
        protocol = WSProtocol(
            None,  # host and port: a client's
            None,  # path: a client's
            False,  # server side
            lambda _request: outcome[0],
            PICOWS_LOG,
            True,  # disconnect on an exception in a callback
            HANDSHAKE_TIMEOUT_S,
            True,  # ping a client silent for the interval; close it if no pong comes within the timeout
            self.ping_interval,
            self.ping_timeout,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # answer pings
            max_size,
            None,  # extra headers: a client's
            16 * 1024,
        )
        transport.pause_reading()  # nothing more is read until the handshake is answered
        protocol.connection_made(transport)
        transport.set_protocol(protocol)
        task = asyncio.get_running_loop().create_task(
            self._admit(transport, protocol, outcome, request, path, query, dict(headers), connections, max_size)
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
        query: str,
        headers: dict[bytes, bytes],
        connections: set,
        max_size: int,
    ) -> None:
        services = self.services
        try:
            tenant = services.admission.check(headers, path, websocket=True)
            if path == GATEWAY_SOCKET:
                session: StreamSocket | NativeGateway = NativeGateway(GatewaySocket(services, tenant))
            else:
                session = await open_socket(services, socket_stream_id(path) or "", tenant, query)
        except Exception as exc:  # a refusal, or a bug: answered either way, never left to the handshake timeout
            outcome.append(WSUpgradeResponseWithListener(refusal(services.answers.error(exc)), None))
        else:
            chosen = subprotocol(headers.get(b"sec-websocket-protocol", b"").decode("latin-1"))
            listener = NativeSocket(session, connections, max_size, self.write_timeout)
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


def echoed(code: WSCloseCode) -> WSCloseCode:
    """The code that answers a client's close: its own where RFC 6455 lets an endpoint send it, else
    1000 (a close without a code reads as picows' NO_INFO; 1005, 1006 and 1015 must never be sent)."""
    value = code.value
    return code if 1000 <= value <= 1003 or 1007 <= value <= 1014 or 3000 <= value <= 4999 else WSCloseCode.OK


class NativeSocket(WSListener):
    """One stream socket on picows: each message submitted, its answer written from the future's
    callback, strictly in order (messages sent ahead wait here, up to :data:`MAX_AHEAD`).

    The socket stops being read for either of two reasons, and is read again only once neither holds:
    :data:`MAX_AHEAD` messages wait, or more than :data:`WRITE_HIGH_WATER` bytes of replies wait for
    the client to take them. A client whose replies stay there ``write_timeout`` seconds is dropped
    (its buffer cannot drain, so no close frame would reach it)."""

    def __init__(self, session: StreamSocket | NativeGateway, connections: set, max_size: int, write_timeout: float):
        self.session = session
        self.connections = connections
        self.max_size = max_size
        self.write_timeout = write_timeout
        self.writing_paused = False  # replies above the high-water mark
        self.stalled: asyncio.TimerHandle | None = None
        self.max_fragments = max_fragments(max_size)
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
        transport.underlying_transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.ahead.clear()
        self.connections.discard(self)
        if self.stalled is not None:
            self.stalled.cancel()

    def pause_writing(self) -> None:
        """The transport's buffer passed the high-water mark: stop reading (unless the messages sent ahead
        already stopped it) until it drains; drop the client if it does not within ``write_timeout``."""
        if self.closed:
            return
        self.writing_paused = True
        if len(self.ahead) < MAX_AHEAD:
            self.transport.underlying_transport.pause_reading()
        self.stalled = asyncio.get_running_loop().call_later(self.write_timeout, self.unread)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.stalled is not None:
            self.stalled.cancel()
            self.stalled = None
        if len(self.ahead) < MAX_AHEAD and not self.closed:
            self.transport.underlying_transport.resume_reading()

    def unread(self) -> None:
        self.stalled = None
        self.closed = True
        self.ahead.clear()
        self.transport.disconnect(graceful=False)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self.closed:  # picows goes on with the frames of a read after a close: none is processed
            return
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
            self.closed = True
            transport.send_close(echoed(frame.get_close_code()))
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
        elif len(self.fragments) > self.max_fragments:
            self.close(WSCloseCode(MESSAGE_TOO_BIG), f"message in more than {self.max_fragments} frames")
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
        if len(self.ahead) == MAX_AHEAD and not self.writing_paused:  # else reading stopped already
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
            if len(self.ahead) == MAX_AHEAD and not self.writing_paused:  # else it stays stopped for that
                self.transport.underlying_transport.resume_reading()
            self.handle(*self.ahead.popleft())

    def close(self, code: WSCloseCode, reason: str) -> None:
        self.closed = True
        self.ahead.clear()
        self.fragments = []
        self.transport.send_close(code, reason[:120].encode())
        self.transport.disconnect()
