"""The one answer path: any error becomes its HTTP answer, its WebSocket message and close code, and is
counted, here and nowhere else. Routes, the edge, both WebSocket planes and the handshakes all answer
through :class:`Answers`, so an error reads the same on every transport and every code is counted once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus

from fastapi.responses import Response
from prometheus_client import Counter

from progress_stream.contract.errors import InternalError, ServiceError
from progress_stream.contract.replies import ErrorReply, SocketErrorReply

log = logging.getLogger(__name__)

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What an error answers: an HTTP status, headers and the :class:`ErrorReply` body; after a WebSocket's
    accept, the close code that follows its message (None: the socket stays open)."""

    error: ServiceError
    status: int
    headers: dict[str, str]
    body: bytes
    close: int | None

    def response(self) -> Response:
        return Response(self.body, self.status, self.headers, JSON)

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers as ASGI and picows take them (with the body's type and length)."""
        fields = {"content-type": JSON, "content-length": str(len(self.body)), **self.headers}
        return [(k.lower().encode(), v.encode("latin-1")) for k, v in fields.items()]

    def http_closing(self) -> bytes:
        """The whole HTTP/1.1 answer, for a connection closed after it (written before any ASGI app runs)."""
        head = [f"HTTP/1.1 {self.status} {HTTPStatus(self.status).phrase}".encode()]
        head += [name + b": " + value for name, value in self.raw_headers()]
        head.append(b"connection: close")
        return b"\r\n".join(head) + b"\r\n\r\n" + self.body

    def socket_message(self, seq: int | None) -> bytes:
        """The error as a stream socket's message (:class:`SocketErrorReply`) for the message ``seq``."""
        return SocketErrorReply.encode_at(self.error, seq)


class Answers:
    """Built once per server (see :mod:`progress_stream.server.wiring`) around the errors counter."""

    def __init__(self, errors: Counter):
        self._errors = errors

    def error(self, exc: BaseException) -> ErrorAnswer:
        """The answer to ``exc``, counted by its code. An exception that is not a :class:`ServiceError` is a
        bug: logged with its traceback and answered ``internal_error`` with nothing of its text."""
        if not isinstance(exc, ServiceError):
            log.error("unexpected error", exc_info=exc)
            exc = InternalError("internal error: the server logged it")
        self._errors.labels(exc.code).inc()
        spec = exc.spec
        return ErrorAnswer(exc, spec.status, exc.headers, ErrorReply.encode(exc), spec.ws_close)
