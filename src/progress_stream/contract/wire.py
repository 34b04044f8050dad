"""The wire contract: stream ids, limits and the JSON requests (the replies are in :mod:`.replies`, the
binary format in :mod:`.binary`, the error codes in :mod:`.errors`).

:class:`Wire` is built once the model is loaded (it knows ``embedding_dim``): its pydantic models
both validate every JSON body (HTTP and WebSocket alike, strictly: numbers must be JSON numbers)
and generate the OpenAPI schema, so what is accepted and what is documented cannot drift apart.
"""

from __future__ import annotations

import base64
import re
import warnings
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import parse_qs

import numpy as np
import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError, create_model

from progress_stream.contract.binary import FLAG_RESET, KNOWN_FLAGS, REQUEST_HEADER
from progress_stream.contract.errors import BadInput, ProtocolViolation, TooManyFrames

#: Checked with ``fullmatch``: Python's ``$`` also matches before a final newline (``"id\n"``). The pattern
#: keeps its anchors for the JSON schema (and pydantic's regex engine, whose ``$`` is the end of the text).
STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
STREAM_ID_RULE = "1-64 characters of [A-Za-z0-9_-]"
#: A stream's WebSocket; the id is checked like every other (:func:`check_stream_id`).
STREAM_SOCKET = "/v1/streams/{stream_id}/ws"
_STREAM_SOCKET = re.compile("^" + STREAM_SOCKET.replace("{stream_id}", "([^/]+)") + "$")

#: A browser cannot set headers on a WebSocket: it offers this subprotocol (which the server selects),
#: plus ``bearer.<API key in unpadded base64url>`` when a key is set.
WS_SUBPROTOCOL = "progress.v1"
BEARER_SUBPROTOCOL = "bearer."


def bearer_subprotocol(api_key: str) -> str:
    return BEARER_SUBPROTOCOL + base64.urlsafe_b64encode(api_key.encode()).rstrip(b"=").decode()


#: The most entries (streams) one multiplexed message carries.
MAX_TICK_ENTRIES = 4096
#: The largest seq: the binary header's uint64, held in an int64 table (JSON takes the same bound).
MAX_SEQ = 2**62

STRICT = ConfigDict(strict=True, extra="forbid")
#: The largest magnitude of an embedding value: far beyond any encoder's features, and small
#: enough that no product inside the cell overflows float32 (which would answer NaN progress).
MAX_ABS_VALUE = 1e6
#: The most characters one JSON number of a frame takes, with its separator: ``-1.2345678901234567e-123, ``.
NUMBER_CHARS = 26


def integral(value: Any) -> Any:
    """JSON Schema counts ``3.0`` as an integer; strings and booleans stay what they are (and fail)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: A stream's frame rate, wherever a stream is opened (a JSON number, or a query parameter's text): what
#: turns the frames left into seconds. Its bounds, for the routes that declare them to FastAPI: any real
#: rate, and none so small that the seconds overflow float32 (a rate of 1e-40 would answer infinity).
FPS_LIMITS: dict[str, Any] = {"ge": 0.001, "le": 1000, "allow_inf_nan": False}
FPS_RULE = "the stream's frames per second, 0.001 to 1000: answers then carry remaining_s"
Fps = Annotated[float, Field(**FPS_LIMITS, description=FPS_RULE)]
_FPS_TEXT = TypeAdapter(Fps)


class CreateStream(BaseModel):
    model_config = STRICT
    stream_id: str | None = Field(None, pattern=STREAM_ID.pattern, description=f"{STREAM_ID_RULE}; random if absent")
    fps: Fps | None = None


def socket_stream_id(path: str) -> str | None:
    """The (unchecked) stream id of a stream socket's path, None for any other path."""
    match = _STREAM_SOCKET.fullmatch(path)
    return match.group(1) if match else None


def socket_fps(query: str) -> float | None:
    """The frame rate a stream socket's handshake names (``?fps=30``), checked like the JSON field; None if
    it names none."""
    given = parse_qs(query, keep_blank_values=True).get("fps")
    if not given:
        return None
    if len(given) > 1:
        raise BadInput("fps", "fps is given more than once")
    try:
        return _FPS_TEXT.validate_python(given[0])
    except ValidationError as exc:
        raise BadInput("fps", f"fps: {exc.errors(include_url=False)[0]['msg']}") from None


def check_stream_id(stream_id: str) -> str:
    """The one stream-id check of every route and the WebSocket; the message never echoes the id."""
    if not STREAM_ID.fullmatch(stream_id):
        raise BadInput("stream_id", f"stream_id must be {STREAM_ID_RULE}")
    return stream_id


#: The most characters of a key the client sent that an error names (an unknown key of 800 KB was
#: echoed back twice, in ``field`` and in ``message``).
EXCERPT_CHARS = 32


def excerpt(text: str) -> str:
    """``text``, or its first :data:`EXCERPT_CHARS` characters and an ellipsis."""
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def field_name(loc: tuple[str | int, ...]) -> str:
    """``('embeddings', 3, 1)`` → ``embeddings[3][1]``; the body itself is ``body``. A key the client
    sent is named by an :func:`excerpt`."""
    name = "".join(f"[{p}]" if isinstance(p, int) else f".{excerpt(p)}" for p in loc).lstrip(".")
    return name or "body"


@dataclass(frozen=True)
class Wire:
    """The limits of one server and the request models they give; every body is parsed here."""

    embedding_dim: int
    max_frames_per_message: int
    max_frames_stateless: int
    max_frames_per_tick: int = 1024
    frames_request: type[BaseModel] = field(init=False)
    progress_request: type[BaseModel] = field(init=False)
    tick_entry: type[BaseModel] = field(init=False)
    tick_request: type[BaseModel] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames_request", self._frames_model("FramesRequest", self.max_frames_per_message))
        object.__setattr__(self, "progress_request", self._frames_model("ProgressRequest", self.max_frames_stateless))
        object.__setattr__(self, "tick_entry", self._frames_model("TickEntry", self.max_frames_per_message))
        entries = Annotated[list[self.tick_entry], Field(min_length=1, max_length=MAX_TICK_ENTRIES)]  # type: ignore[name-defined]
        object.__setattr__(self, "tick_request", create_model("TickRequest", __config__=STRICT, frames=(entries, ...)))

    def _frames_model(self, name: str, max_frames: int) -> type[BaseModel]:
        number = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE, allow_inf_nan=False)]
        row = Annotated[
            list[number],
            Field(min_length=self.embedding_dim, max_length=self.embedding_dim, description="one frame's embedding"),
        ]
        frames = Annotated[list[row], Field(min_length=1, max_length=max_frames, description="frames, in order")]
        fields: dict[str, Any] = {"embeddings": (frames, ...)}
        if name == "TickEntry":
            fields["stream_id"] = (str, Field(..., pattern=STREAM_ID.pattern, description=STREAM_ID_RULE))
        if name in ("FramesRequest", "TickEntry"):
            seq = Annotated[int, BeforeValidator(integral)]
            fields["seq"] = (seq, Field(..., ge=0, le=MAX_SEQ, description="stream-wide index of the first frame"))
            fields["reset"] = (bool, Field(False, description="start a new action at the chunk's first frame"))
        return create_model(name, __config__=STRICT, **fields)

    def max_body_bytes(self, frames: int) -> int:
        """The largest JSON body of ``frames`` valid frames (numbers as Python or JavaScript print them):
        the body limit of a route, so no schema-valid request is refused for its size."""
        return 1024 + frames * (self.embedding_dim * NUMBER_CHARS + 4)

    def parse_frames(self, body: bytes | str) -> tuple[int, np.ndarray, bool]:
        """A JSON frames message → ``(seq, float32 (n, D), reset)``."""
        msg = self._validate(self.frames_request, body)
        return msg.seq, check_values(np.array(msg.embeddings, np.float32)), msg.reset

    def parse_progress(self, body: bytes | str) -> np.ndarray:
        return check_values(np.array(self._validate(self.progress_request, body).embeddings, np.float32))

    def parse_tick(self, body: bytes | str) -> tuple[list[Any], np.ndarray | None]:
        """A JSON tick ``{"frames": [entries]}`` → per entry ``(stream_id, seq, frames, reset)``, or
        ``(stream_id?, seq?, BadInput)`` for an entry that is invalid (the others stand); and, when every entry
        is valid and carries as many frames as the others (the usual tick), all their frames as one
        ``(entries, n, D)`` array, of which each entry's are a view (else None). A body that is not such an
        object at all is a :class:`ProtocolViolation`. A valid message is validated whole (one pass, in
        pydantic's core); only a message with an invalid entry is looked at entry by entry."""
        try:
            ticks = self.tick_request.model_validate_json(body).frames
        except ValidationError:
            return self._parse_tick_entries(body), None
        # the model bounds every value (finite, within ±MAX_ABS_VALUE): no check left but the conversion
        block = None
        if len({len(entry.embeddings) for entry in ticks}) == 1:  # the usual tick: one conversion for all
            block = np.array([entry.embeddings for entry in ticks], np.float32)
            frames = list(block)
        else:
            frames = [np.array(entry.embeddings, np.float32) for entry in ticks]
        return [(e.stream_id, e.seq, x, e.reset) for e, x in zip(ticks, frames, strict=True)], block

    def _parse_tick_entries(self, body: bytes | str) -> list[Any]:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ProtocolViolation(f"malformed JSON: {exc}") from None
        entries = message.get("frames") if isinstance(message, dict) and len(message) == 1 else None
        if not isinstance(entries, list) or not 0 < len(entries) <= MAX_TICK_ENTRIES:
            raise ProtocolViolation(f'a tick is {{"frames": [1 to {MAX_TICK_ENTRIES} entries]}}')
        out: list[Any] = []
        for i, entry in enumerate(entries):
            try:
                msg = self.tick_entry.model_validate(entry)
                out.append((msg.stream_id, msg.seq, check_values(np.array(msg.embeddings, np.float32)), msg.reset))
            except ValidationError as exc:
                known = entry if isinstance(entry, dict) else {}
                seq = known.get("seq")
                error = bad_input(exc.errors(include_url=False)[0])
                error.field = f"frames[{i}].{error.field}"
                out.append((known.get("stream_id"), seq if isinstance(seq, int) else None, error))
            except BadInput as exc:
                out.append((entry["stream_id"], entry["seq"], exc))
        return out

    @staticmethod
    def parse_create(body: bytes | str) -> CreateStream:
        return Wire._validate(CreateStream, body) if body else CreateStream()

    @staticmethod
    def _validate(model: type[BaseModel], body: bytes | str) -> Any:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise bad_input(exc.errors(include_url=False)[0]) from None

    def parse_binary(self, data: bytes) -> tuple[int, np.ndarray, bool]:
        """A binary frames message → ``(seq, embeddings, reset)``; broken framing is a ProtocolViolation."""
        dim = self.embedding_dim
        if len(data) < REQUEST_HEADER.size:
            raise ProtocolViolation(f"binary message shorter than its {REQUEST_HEADER.size}-byte header")
        seq, count, flags = REQUEST_HEADER.unpack_from(data)
        if len(data) != REQUEST_HEADER.size + 4 * count * dim:
            raise ProtocolViolation(f"binary message of {len(data)} bytes does not hold {count} frames of {dim} floats")
        if flags & ~KNOWN_FLAGS:
            raise ProtocolViolation(f"unknown flag bits {flags & ~KNOWN_FLAGS:#x} (known: reset = {FLAG_RESET})")
        if seq > MAX_SEQ:
            raise BadInput("seq", f"seq must be at most {MAX_SEQ}")
        if count == 0:
            raise BadInput("count", "count is 0: send at least one frame", code="empty")
        if count > self.max_frames_per_message:
            raise TooManyFrames("count", f"count is {count}; at most {self.max_frames_per_message} frames per message")
        arr = np.frombuffer(data, dtype="<f4", offset=REQUEST_HEADER.size).reshape(count, dim)
        return seq, check_values(arr), bool(flags & FLAG_RESET)


def bad_input(error: dict) -> BadInput:
    """A pydantic error → the service's error: the field it names and the code a client can act on."""
    loc, kind = tuple(error["loc"]), error["type"]
    if kind == "json_invalid":
        return BadInput("body", f"malformed JSON: {error['msg']}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return BadInput("body", "expected a JSON object")
    name = field_name(loc)
    if loc == ("embeddings",) and kind == "too_short":
        return BadInput(name, "embeddings is empty: send at least one frame", code="empty")
    if loc == ("embeddings",) and kind == "too_long":
        return TooManyFrames(name, f"embeddings: {error['msg']}")
    if len(loc) == 2 and loc[0] == "embeddings" and kind in ("too_short", "too_long"):
        dim = error["ctx"].get("min_length", error["ctx"].get("max_length"))
        return BadInput(name, f"{name}: each frame must have {dim} numbers", code="wrong_dimension")
    return BadInput(name, f"{name}: {error['msg']}")


# values beyond ~1.8e19 overflow the sum of squares to infinity: refused either way, so not worth a warning
warnings.filterwarnings("ignore", "overflow encountered in dot", RuntimeWarning, __name__)


def check_values(arr: np.ndarray) -> np.ndarray:
    """Refuse NaN, infinity and values beyond ±MAX_ABS_VALUE, naming the first bad row. The sum of squares
    (one BLAS call, half the cost of abs + max) clears almost every chunk: within MAX_ABS_VALUE² every
    value is within MAX_ABS_VALUE, and NaN or infinity compares False; only the rest is looked at closely."""
    flat = arr.reshape(-1)
    if np.dot(flat, flat) <= MAX_ABS_VALUE**2:
        return arr
    if not (np.abs(arr).max() <= MAX_ABS_VALUE):  # NaN compares False
        row = int(np.flatnonzero(~(np.abs(arr) <= MAX_ABS_VALUE).all(axis=1))[0])
        message = f"embeddings[{row}] holds NaN, infinity or a value beyond ±{MAX_ABS_VALUE:g}"
        raise BadInput(f"embeddings[{row}]", message, code="not_finite")
    return arr
