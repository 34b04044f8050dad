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


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    answers: Answers
    max_connections: int | None = None
    native: NativePlane | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
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
        super().data_received(data)  # first: a body in the same read is not counted as head
        if self._head_open and not self.transport.is_closing():
            self._head_read += len(data)
            if self._head_read > MAX_HEAD and self._refusal is None:
                self._refusal = HeadersTooLarge(f"request headers exceed {MAX_HEAD // 1024} KB")
            if isinstance(self._refusal, HeadersTooLarge):  # at once, not when (if ever) the head ends
                self._refuse()

    def on_message_begin(self) -> None:
        super().on_message_begin()
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
        if self._refusal is None:
            super().on_message_complete()

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
