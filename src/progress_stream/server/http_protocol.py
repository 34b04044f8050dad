"""uvicorn's httptools protocol with a deadline on request headers and a bound on their size.

uvicorn arms no timer on a new connection, nor while a request's headers trickle in (each byte
disarms its keep-alive timer), so a client that sends half a request line holds its connection
forever. Here a connection whose headers are not complete ``header_timeout`` seconds after it
opened, or after its previous response, is closed. Bodies have their own deadline in
:mod:`progress_stream.server.edge`. The upgrade of a stream socket goes to the native data plane
(:mod:`progress_stream.server.sockets.native`) where one is given.

A connection opened while the server holds ``max_connections`` (HTTP and WebSocket, handshakes included)
is answered 503 ``too_many_connections`` at its first request and closed, before the file descriptors run
out (see :mod:`progress_stream.server.serve`).

Neither uvicorn nor httptools bounds a request's head: 0.8 MB of ``a:`` lines became 196,000 header
tuples before any check ran. Here a head past nginx's default (:data:`MAX_LINE` a line,
:data:`MAX_HEAD` in all) or past :data:`MAX_FIELDS` fields is answered 431 ``headers_too_large`` and
the connection closed; nothing past those limits is stored. The fields httptools hands over are counted
as they come; the bytes of a line it still holds (one that has not ended) are counted after each read.

A connection closed while its request's body is still coming (a refusal answered before the body was read:
401, 413, 431…) closes *lingering*, as nginx does: the answer is followed by a FIN, and what the client
still sends is read and dropped for up to :data:`LINGER_S` seconds or :data:`LINGER_BYTES` bytes, then
the connection closes. Closed at once, the kernel would answer the unread bytes with a reset, which can
destroy the answer before the client reads it.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from progress_stream.contract.errors import HeadersTooLarge, ServiceError, TooManyConnections
from progress_stream.server.answers import Answers
from progress_stream.server.sockets.native import NativePlane

#: A request line or header line (nginx: large_client_header_buffers 4 8k).
MAX_LINE = 8 * 1024
#: A request's whole head.
MAX_HEAD = 32 * 1024
#: Header fields of one request.
MAX_FIELDS = 100
#: How long, and how many bytes of a refused body, a closing connection still reads (and drops).
LINGER_S = 2.0
LINGER_BYTES = 4 * 1024 * 1024


class LingeringTransport:
    """The connection's transport as uvicorn's HTTP code sees it: the same in all but :meth:`close`, which
    lingers while the request's body is still coming (see the module's doc)."""

    def __init__(self, inner: asyncio.Transport, protocol: HeaderDeadlineProtocol):
        self.inner = inner
        self.protocol = protocol
        self.lingering = False
        self.dropped = 0  # bytes read and dropped while lingering
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def is_closing(self) -> bool:
        return self.lingering or self.inner.is_closing()

    def close(self) -> None:
        inner = self.inner
        if self.lingering or inner.is_closing():
            return
        if not self.protocol.body_coming or not inner.can_write_eof():
            inner.close()
            return
        self.lingering = True
        inner.write_eof()
        inner.resume_reading()  # flow control may have paused it: what comes must be read to be dropped
        self._timer = asyncio.get_running_loop().call_later(LINGER_S, inner.close)

    def drop(self, data: bytes) -> None:
        """Bytes read while lingering: dropped; past :data:`LINGER_BYTES`, the connection closes."""
        self.dropped += len(data)
        if self.dropped > LINGER_BYTES:
            self.inner.close()

    def lost(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    answers: Answers
    max_connections: int | None = None
    native: NativePlane | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.body_coming = False  # a request has begun and its body has not ended: a close lingers
        super().connection_made(LingeringTransport(transport, self))  # type: ignore[arg-type]
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)
        self._head_open = True  # a request's head is being read (until its headers are complete)
        self._head_read = 0  # bytes read while it was: the fields stored and the part httptools still holds
        self._head_stored = 0  # bytes of the request line and the fields stored
        self._refusal: ServiceError | None = None  # what this connection's request is answered instead
        if self.max_connections is not None and self.open_connections() > self.max_connections:
            self._refusal = TooManyConnections(f"the server holds its {self.max_connections} connections")

    def open_connections(self) -> int:
        """uvicorn's open connections (this one, HTTP and WebSocket) and the native handshakes under way
        (a native socket counts itself once it is open)."""
        return len(self.connections) + (self.native.admitting if self.native is not None else 0)

    def data_received(self, data: bytes) -> None:
        if self.transport.lingering:
            self.transport.drop(data)
            return
        super().data_received(data)  # first: a body in the same read is not counted as head
        if self._head_open and not self.transport.is_closing():
            self._head_read += len(data)
            if self._head_read > MAX_HEAD and self._refusal is None:
                self._refusal = HeadersTooLarge(f"request headers exceed {MAX_HEAD // 1024} KB")
            if isinstance(self._refusal, HeadersTooLarge):  # at once, not when (if ever) the head ends
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.body_coming = True
        self._head_open, self._head_read, self._head_stored = True, 0, 0
        if self._deadline is None:  # a later request on a kept-alive connection
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    # A refused request is parsed to its end, storing nothing: an exception raised in a callback would
    # come out of httptools as a parser error, which uvicorn logs and answers 400.
    def on_url(self, url: bytes) -> None:
        if self._refusal is not None:
            return
        if len(self.url) + len(url) > MAX_LINE:
            self._refusal = HeadersTooLarge(f"the request line exceeds {MAX_LINE // 1024} KB")
            return
        self._head_stored += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is not None:
            return
        line = len(name) + len(value) + 4
        self._head_stored += line
        if line > MAX_LINE:
            self._refusal = HeadersTooLarge(f"a header line exceeds {MAX_LINE // 1024} KB")
        elif len(self.headers) == MAX_FIELDS:
            self._refusal = HeadersTooLarge(f"more than {MAX_FIELDS} header fields")
        elif self._head_stored > MAX_HEAD:
            self._refusal = HeadersTooLarge(f"request headers exceed {MAX_HEAD // 1024} KB")
        else:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._head_open = False
        if self._refusal is not None:  # no ASGI cycle, no upgrade
            self._refuse()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self.body_coming = False
        if self._refusal is None:
            super().on_message_complete()

    def eof_received(self) -> bool | None:
        if self.transport.lingering:  # the client has sent all it will: done
            self.transport.inner.close()
            return None
        return super().eof_received()

    def _refuse(self) -> None:
        """Answer the refusal in the error shape and close; while an earlier response on this connection
        is still being written (pipelining), close without an answer rather than interleave one."""
        self._disarm()
        self._head_open = False
        answer = self.answers.error(self._refusal)
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer.http_closing())
        self.transport.close()

    # After a refused upgrade request, httptools still reports the upgrade: uvicorn then upgrades (if the
    # fields it looks at were stored) or warns of an unsupported one. Neither: the refusal is answered.
    def handle_websocket_upgrade(self) -> None:
        if self._refusal is not None:
            return
        url = httptools.parse_url(self.url)
        path = urllib.parse.unquote(url.path.decode("ascii"))  # uvicorn leaves it unset
        self.transport = self.transport.inner  # a WebSocket's close never lingers (it is no longer HTTP)
        if self.native is None or not self.native.claims(path):
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)  # the socket registers itself once it is open
        request = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]  # as uvicorn rebuilds it
        for name, value in self.scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        query = (url.query or b"").decode("latin-1")
        self.native.upgrade(self.transport, b"".join(request), path, query, self.scope["headers"], self.connections)

    def _unsupported_upgrade_warning(self) -> None:
        if self._refusal is None:
            super()._unsupported_upgrade_warning()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if isinstance(self.transport, LingeringTransport):
            self.transport.lost()
        super().connection_lost(exc)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def http_protocol(
    header_timeout: float, answers: Answers, max_connections: int | None = None, native: NativePlane | None = None
) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=``: this header deadline, these bounds and at most
    ``max_connections`` (None: no cap), refusals answered through ``answers``, stream sockets to ``native``."""
    attributes = {"header_timeout": header_timeout, "answers": answers, "max_connections": max_connections}
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {**attributes, "native": native})
