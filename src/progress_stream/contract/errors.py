"""The error contract: every error code with its HTTP status, WebSocket close code, Retry-After and
what a client should do. One table: the server's answers, the Python client, the load test and the
docs' error table all derive from :data:`ERRORS`.

:class:`EngineError` is what the engine raises; :class:`WireError` is what the transports and the
wire codecs raise (bad bodies, auth, origins, framing). Both are :class:`ServiceError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Action(StrEnum):
    """What a client does with an error (the Python client and the load test act on this)."""

    FIX = "fix the request; resending it unchanged fails again"
    RESUME = "resend from error.expected_seq (frames from there on were not accepted)"
    WAIT = "wait Retry-After seconds, then resend the same message"
    RECONNECT = "reconnect (and resend from next_seq)"


#: WebSocket close codes (RFC 6455): after accept, only these close a socket; other errors are messages.
POLICY_VIOLATION, MESSAGE_TOO_BIG, INTERNAL_ERROR, SERVICE_RESTART, TRY_AGAIN_LATER = 1008, 1009, 1011, 1012, 1013


@dataclass(frozen=True)
class ErrorSpec:
    status: int  # HTTP status, also the status of a refused WebSocket handshake
    action: Action
    meaning: str
    ws_close: int | None = None  # close code after a WebSocket accept; None: an error message, socket stays open
    retry_after: int | None = None  # seconds, sent as Retry-After


ERRORS: dict[str, ErrorSpec] = {
    "invalid_input": ErrorSpec(422, Action.FIX, "a field is invalid or missing; error.field names it"),
    "empty": ErrorSpec(422, Action.FIX, "no frames: send at least one"),
    "wrong_dimension": ErrorSpec(422, Action.FIX, "a frame does not have the model's embedding_dim numbers"),
    "not_finite": ErrorSpec(
        422, Action.FIX, "a frame holds NaN, infinity or a value beyond ±1e6; error.field names it"
    ),
    "too_many_frames": ErrorSpec(422, Action.FIX, "more frames in one message than the limit"),
    "too_large": ErrorSpec(
        413,
        Action.FIX,
        "a body larger than the route's frame limit can need (a WebSocket message: close 1009)",
        MESSAGE_TOO_BIG,
    ),
    "unsupported_media_type": ErrorSpec(415, Action.FIX, "a body that is not Content-Type application/json, or gzip"),
    "unauthorized": ErrorSpec(401, Action.FIX, "missing or wrong 'Authorization: Bearer <API key>'"),
    "forbidden_origin": ErrorSpec(403, Action.FIX, "a browser Origin not in PROGRESS_ALLOWED_ORIGINS"),
    "wrong_host": ErrorSpec(
        421, Action.FIX, "the request's Host is not a name this server answers (PROGRESS_ALLOWED_HOSTS)"
    ),
    "not_found": ErrorSpec(404, Action.FIX, "no such route"),
    "method_not_allowed": ErrorSpec(405, Action.FIX, "the route does not take that method; see Allow"),
    "request_timeout": ErrorSpec(408, Action.RECONNECT, "the request's body did not arrive in time"),
    "headers_too_large": ErrorSpec(
        431, Action.FIX, "request headers past 8 KB a line, 32 KB in all or 100 fields (the connection is closed)"
    ),
    "stream_not_found": ErrorSpec(
        404, Action.FIX, "no such stream (never created, deleted or evicted)", POLICY_VIOLATION
    ),
    "stream_id_taken": ErrorSpec(
        409, Action.FIX, "the id is in use by another API key's stream: create with another id (or none)"
    ),
    "seq_conflict": ErrorSpec(409, Action.RESUME, "seq does not continue the stream, or is not the same chunk"),
    "protocol_violation": ErrorSpec(400, Action.FIX, "a WebSocket message breaks the framing", POLICY_VIOLATION),
    "inference_failed": ErrorSpec(500, Action.RESUME, "the model call failed; the frames were not processed"),
    "too_many_streams": ErrorSpec(503, Action.WAIT, "the server holds max_streams streams", TRY_AGAIN_LATER, 5),
    "stream_quota": ErrorSpec(
        429,
        Action.WAIT,
        "this API key holds max_streams_per_key streams: delete some, or wait for idle ones to expire",
        TRY_AGAIN_LATER,
        5,
    ),
    "overloaded": ErrorSpec(503, Action.WAIT, "too many frames wait for inference", TRY_AGAIN_LATER, 1),
    "shutting_down": ErrorSpec(503, Action.RECONNECT, "the server is stopping", SERVICE_RESTART, 1),
    "too_many_connections": ErrorSpec(
        503, Action.WAIT, "the server holds max_connections open connections", TRY_AGAIN_LATER, 1
    ),
    "too_many_subscribers": ErrorSpec(
        503, Action.WAIT, "the live board has board_max_subscribers subscribers", TRY_AGAIN_LATER, 5
    ),
    "store_unreachable": ErrorSpec(
        503, Action.WAIT, "the shared state store cannot be reached to find the stream", TRY_AGAIN_LATER, 1
    ),
    "stream_unreadable": ErrorSpec(
        500,
        Action.FIX,
        "the stream's state in the shared store cannot be read (a corrupt key, logged); "
        "DELETE the stream to start it anew",
        INTERNAL_ERROR,
    ),
    "internal_error": ErrorSpec(
        500, Action.RECONNECT, "an unexpected server error (logged by the server, not described)", INTERNAL_ERROR
    ),
}


class ServiceError(Exception):
    """Base: ``code`` is a key of :data:`ERRORS`; the message says what to do."""

    code = "invalid_input"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.code]

    @property
    def headers(self) -> dict[str, str]:
        """The HTTP headers this error's answer carries besides its type (``Retry-After``)."""
        retry_after = self.spec.retry_after
        return {"Retry-After": str(retry_after)} if retry_after is not None else {}


class EngineError(ServiceError):
    """Raised by the engine (any transport maps it through :data:`ERRORS`)."""


class WireError(ServiceError):
    """Raised by the transports and the codecs: what arrived cannot be taken as it is."""


class BadInput(WireError):
    """A request's content is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(message)
        self.field = field
        if code:
            self.code = code


class PayloadTooLarge(BadInput):
    code = "too_large"


class TooManyFrames(BadInput):  # 422 like the other content errors; 413 is the body's size in bytes
    code = "too_many_frames"


class UnsupportedMediaType(WireError):
    code = "unsupported_media_type"


class Unauthorized(WireError):
    code = "unauthorized"


class ForbiddenOrigin(WireError):
    code = "forbidden_origin"


class WrongHost(WireError):
    """The ``Host`` a request names is not one of the server's (a page rebound by DNS names its own)."""

    code = "wrong_host"


class RequestTimeout(WireError):
    code = "request_timeout"


class HeadersTooLarge(WireError):
    code = "headers_too_large"


class RouteNotFound(WireError):
    code = "not_found"


class MethodNotAllowed(WireError):
    """``allow``: the methods the route does take (sent as ``Allow``)."""

    code = "method_not_allowed"

    def __init__(self, message: str, allow: str):
        super().__init__(message)
        self.allow = allow

    @property
    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow}


class InternalError(ServiceError):
    """Anything unexpected: answered without its details (the server logs them)."""

    code = "internal_error"


class ProtocolViolation(WireError):
    """A WebSocket message that breaks the framing (not JSON, not an object, bad binary length or flags)."""

    code = "protocol_violation"


class StreamNotFound(EngineError):
    code = "stream_not_found"


class StreamIdTaken(EngineError):
    """A create names an id held by another tenant's stream (nothing of that stream is told)."""

    code = "stream_id_taken"


class SeqConflict(EngineError):
    """``seq`` is past ``next_seq``, overlaps, differs from the accepted chunk, or is too old to replay;
    the client resumes from ``expected_seq``."""

    code = "seq_conflict"

    def __init__(self, message: str, expected_seq: int):
        super().__init__(message)
        self.expected_seq = expected_seq


class InferenceFailed(SeqConflict):
    """The model call failed; the stream went back to its processed frames (resend from ``expected_seq``)."""

    code = "inference_failed"


class Overloaded(EngineError):
    code = "overloaded"


class TooManyStreams(EngineError):
    code = "too_many_streams"


class StreamQuota(EngineError):
    code = "stream_quota"


class ShuttingDown(EngineError):
    code = "shutting_down"


class StoreUnreachable(EngineError):
    code = "store_unreachable"


class StreamUnreadable(EngineError):
    code = "stream_unreadable"


class TooManyConnections(WireError):
    code = "too_many_connections"


class TooManySubscribers(WireError):
    code = "too_many_subscribers"


def error_table() -> str:
    """The docs' error table (generated when the docs are built)."""
    rows = [
        "| code | HTTP | WebSocket after accept | Retry-After | meaning | client should |",
        "|---|---|---|---|---|---|",
    ]
    for code, spec in ERRORS.items():
        close = f"close {spec.ws_close}" if spec.ws_close else "error message, stays open"
        retry = f"{spec.retry_after} s" if spec.retry_after is not None else ""
        rows.append(f"| `{code}` | {spec.status} | {close} | {retry} | {spec.meaning} | {spec.action.value} |")
    return "\n".join(rows)
