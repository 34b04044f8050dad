"""One stream's WebSocket protocol, whatever carries the socket: open, parse, submit, answer, errors.

Both data planes use it: the ASGI route (:mod:`.asgi`) and the native one (:mod:`.native`), so a stream
may be used from either and they cannot drift apart. A socket is answered strictly in order: the batcher
advances a stream by at most one message per cycle, so taking the next message before this one is
answered would gain nothing.
"""

from __future__ import annotations

import asyncio

import orjson

from progress_stream.contract.binary import REQUEST_HEADER, binary_reply
from progress_stream.contract.errors import BadInput, ProtocolViolation, SeqConflict, StreamIdTaken
from progress_stream.contract.replies import Estimates, SocketReply
from progress_stream.contract.wire import WS_SUBPROTOCOL, check_stream_id, socket_fps
from progress_stream.engine.streams import Stream, Tenant, missing
from progress_stream.server.wiring import Services

#: The most frames one message may come in: each is an allocation and a callback, and an empty
#: continuation frame is 6 bytes on the wire (they appended without end).
MAX_FRAGMENTS = 1024
#: What a fragment costs besides its payload (its bytes object and list slot), counted against the
#: message limit: a small limit allows fewer fragments.
FRAGMENT_OVERHEAD = 64


def max_fragments(max_size: int) -> int:
    """The most frames a message of at most ``max_size`` bytes may come in (both planes close 1009 past it)."""
    return max(2, min(MAX_FRAGMENTS, max_size // FRAGMENT_OVERHEAD))


async def open_socket(services: Services, stream_id: str, tenant: Tenant, query: str) -> StreamSocket:
    """A stream socket's handshake, on either plane, once admission has passed (it told the ``tenant``): the
    id and the frame rate its ``query`` names (``fps=30``) checked, the stream created or taken over; raises
    the :class:`ServiceError` that refuses the handshake. A socket attaches to a stream: one of another
    tenant is not found, as it is over HTTP."""
    try:
        stream, _ = await services.engine.open(check_stream_id(stream_id), tenant, socket_fps(query))
    except StreamIdTaken:
        raise missing(stream_id) from None
    return StreamSocket(services, stream)


def subprotocol(offered: str) -> str | None:
    """The subprotocol to select from a handshake's offer: a browser offers ``progress.v1`` (its key rides
    beside it) and fails unless it is selected."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in (p.strip() for p in offered.split(",")) else None


class StreamSocket:
    """The state of one socket of one stream between its messages."""

    __slots__ = ("answers", "conflicted", "engine", "latency", "seq", "stream", "wire")

    def __init__(self, services: Services, stream: Stream):
        self.engine = services.engine
        self.wire = services.wire
        self.answers = services.answers
        self.stream = stream  # held, not looked up per message; a deleted or evicted one answers 1008
        self.latency = self.engine.metrics.request_seconds.labels("ws")
        self.seq: int | None = None  # the seq of the message being answered, once known (errors carry it)
        self.conflicted: tuple = ()  # (seq, frames, reset) of a message that just met a seq conflict

    def submit(self, data: bytes | str, binary: bool) -> asyncio.Future:
        """Parse and submit one message; its future yields the :class:`Estimates` of its frames."""
        self.seq = None
        if binary:
            try:
                seq, frames, reset = self.wire.parse_binary(data)
            except BadInput:
                self.seq = REQUEST_HEADER.unpack_from(data)[0]  # the header parsed; its content did not
                raise
        else:
            try:
                seq, frames, reset = self.wire.parse_frames(data)
            except BadInput as exc:
                if exc.field == "body":  # not a JSON object at all: the framing is broken
                    raise ProtocolViolation(exc.message) from None
                self.seq = seq_of(data)
                raise
        self.seq = seq
        try:
            return self.engine.submit(self.stream, seq, frames, reset)
        except SeqConflict:
            self.conflicted = (seq, frames, reset)  # kept only on this path: the hot one allocates nothing
            raise

    async def resubmit(self, conflict: SeqConflict) -> asyncio.Future:
        """After a conflict: a copy behind the client may catch up from the shared store, else it stands."""
        conflicted, self.conflicted = self.conflicted, ()
        return await self.engine.resubmit(self.stream, conflict, *conflicted)

    def reply(self, answers: Estimates, binary: bool) -> bytes:
        """The answer to the message just processed (JSON as UTF-8 bytes)."""
        if binary:
            return binary_reply(self.seq, self.stream.next_seq, answers)
        return SocketReply.encode(self.seq, answers, self.stream.next_seq)

    def error(self, exc: BaseException) -> tuple[bytes, int | None]:
        """The error message for ``exc`` and the close code that must follow it (None: stay open)."""
        answer = self.answers.error(exc)
        return answer.socket_message(self.seq), answer.close


def seq_of(data: bytes | str) -> int | None:
    """The seq of a message that failed validation, if it has a usable one (for its error message)."""
    try:
        seq = orjson.loads(data).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
