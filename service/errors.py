"""The engine's errors; each transport maps them to its own codes (HTTP status, WebSocket close code)."""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class EngineError(Exception):
    """Base: ``code`` is a stable machine-readable name, the message says what to do."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadInput(EngineError):
    """A request's content is invalid; ``field`` names the offending field."""

    code = "invalid_input"

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(message)
        self.field = field
        if code:
            self.code = code


class PayloadTooLarge(BadInput):
    code = "too_large"


class TooManyFrames(PayloadTooLarge):
    code = "too_many_frames"


class Unauthorized(EngineError):
    code = "unauthorized"


class StreamNotFound(EngineError):
    code = "stream_not_found"


class SeqConflict(EngineError):
    """``seq`` is past ``next_seq``, or too old to replay; the client resumes from ``expected_seq``."""

    code = "seq_conflict"

    def __init__(self, message: str, expected_seq: int):
        super().__init__(message)
        self.expected_seq = expected_seq


class Overloaded(EngineError):
    """The server cannot take this now; retry after ``retry_after`` seconds."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class TooManyStreams(Overloaded):
    code = "too_many_streams"


class InferenceFailed(EngineError):
    """The model call failed; the frames were not processed (resend from next_seq)."""

    code = "inference_failed"


class ProtocolViolation(EngineError):
    """A WebSocket message that breaks the framing (not JSON, not an object, bad binary length)."""

    code = "protocol_violation"


def error_body(exc: EngineError) -> dict:
    """The one JSON error shape of every transport: ``{"error": {code, message, field?, expected_seq?}}``."""
    body: dict = {"code": exc.code, "message": exc.message}
    if isinstance(exc, BadInput):
        body["field"] = exc.field
    if isinstance(exc, SeqConflict):
        body["expected_seq"] = exc.expected_seq
    return {"error": body}


def most_specific(table: dict[type, T], exc: Exception, default: T | None = None) -> T | None:
    """The value for the most specific class of ``exc`` (in MRO order) that ``table`` maps."""
    return next((table[c] for c in type(exc).__mro__ if c in table), default)
