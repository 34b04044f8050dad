"""uvicorn's httptools protocol with a deadline on request headers.

uvicorn arms no timer on a new connection, nor while a request's headers trickle in (each byte
disarms its keep-alive timer), so a client that sends half a request line holds its connection
forever. Here a connection whose headers are not complete ``header_timeout`` seconds after it
opened, or after its previous response, is closed. Bodies have their own deadline in
:mod:`progress_stream.server.edge`. The upgrade of a stream socket goes to the native data plane
(:mod:`progress_stream.server.sockets.native`) where one is given.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from progress_stream.server.sockets.native import NativePlane


class HeaderDeadlineProtocol(HttpToolsProtocol):
    header_timeout = 10.0
    native: NativePlane | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a later request on a kept-alive connection
            self._deadline = self.loop.call_later(self.header_timeout, self._headers_late)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        path = urllib.parse.unquote(httptools.parse_url(self.url).path.decode("ascii"))  # uvicorn leaves it unset
        if self.native is None or not self.native.claims(path):
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)  # the socket registers itself once it is open
        request = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]  # as uvicorn rebuilds it
        for name, value in self.scope["headers"]:
            request += [name, b": ", value, b"\r\n"]
        request.append(b"\r\n")
        self.native.upgrade(self.transport, b"".join(request), path, self.scope["headers"], self.connections)

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


def http_protocol(header_timeout: float, native: NativePlane | None = None) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn's ``http=``: this header deadline, stream sockets to ``native``."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout, "native": native}
    )
