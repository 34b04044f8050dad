"""The gateway protocol on a socket (see :mod:`progress_stream.contract.gateway`): attach many streams to one
connection, then answer each tick, the frames of any number of them, with one message.

Both data planes carry it (as they carry :mod:`.session` for single streams), and ``POST /v1/frames`` runs
its ticks. A tick is one submission to the engine (:meth:`~progress_stream.engine.engine.Engine.tick`:
one future, whatever the number of streams) and one reply. A binary tick whose entries all carry the
same number of frames, the common case, is parsed, checked and answered as numpy records, and the engine
takes it as one block (:meth:`~progress_stream.engine.engine.Engine.tick_block`), so its Python work per
stream is a few attribute reads and writes.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from progress_stream.contract.binary import FLAG_RESET, reply_flags
from progress_stream.contract.errors import BadInput, ProtocolViolation, ServiceError, TooManyFrames
from progress_stream.contract.gateway import (
    ENTRY_HEADER,
    ERROR_CODES,
    MAX_ATTACHED,
    MESSAGE_HEADER,
    REPLY_ENTRY_HEADER,
    VERSION,
    Attach,
    Detach,
    TickReply,
    entry_trailer,
    reply_dtype,
    request_dtype,
    trailer_dtype,
)
from progress_stream.contract.replies import ErrorReply, Estimates, stream_answers
from progress_stream.contract.wire import MAX_ABS_VALUE, MAX_SEQ, bad_input, check_values
from progress_stream.engine.streams import NEXT_SEQ, Stream, Tenant
from progress_stream.server.wiring import Services

TICK = re.compile(r'\s*\{\s*"frames"\s*:')  # a JSON tick, told from attach and detach without parsing it twice
KINDS = ("attach", "detach", "frames")
STATUS = {code: i + 1 for i, code in enumerate(ERROR_CODES)}
Entry = tuple[Stream, int, np.ndarray, bool] | BaseException


class GatewaySocket:
    """One gateway connection: its attached streams by handle, and each message's answer."""

    def __init__(self, services: Services, tenant: Tenant):
        self.services = services
        self.tenant = tenant  # a connection attaches only its key's streams (another's are not found)
        self.engine = services.engine
        self.answers = services.answers
        self.dim = services.wire.embedding_dim
        self.max_frames = services.wire.max_frames_per_message
        self.streams: list[Stream] = []  # by handle
        self.handles: dict[str, int] = {}
        self.live = bytearray()  # by handle: 1 while attached (detached handles are not reused)
        self.latency = self.engine.metrics.request_seconds.labels("gateway")

    async def answer(self, data: bytes | str, binary: bool) -> bytes:
        """The reply to one message; raises :class:`ProtocolViolation` for broken framing (the socket closes).
        The transport observes :attr:`latency` around it."""
        if binary:
            return await self.binary_tick(data)
        return await self.text(data)

    def error(self, exc: BaseException) -> tuple[bytes, int]:
        """The message for what :meth:`answer` raised, and the close code that follows it: every such error
        closes a gateway (an entry's own errors are answered in its entry)."""
        answer = self.answers.error(exc)
        return answer.socket_message(None), answer.close or 1008

    async def text(self, data: bytes | str) -> bytes:
        if TICK.match(data[:32] if isinstance(data, str) else data[:32].decode("utf-8", "replace")):
            return orjson.dumps(await self.json_tick(data), option=orjson.OPT_SERIALIZE_NUMPY)  # parsed once
        try:
            head = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ProtocolViolation(f"malformed JSON: {exc}") from None
        kinds = [k for k in KINDS if k in head] if isinstance(head, dict) else []
        kind = kinds[0] if len(kinds) == 1 else None
        if kind == "attach":
            return orjson.dumps(await self.attach(*self.attach_message(head)))
        if kind == "detach":
            return orjson.dumps({"detached": self.detach(self.message(Detach, head).detach)})
        if kind == "frames":
            return orjson.dumps(await self.json_tick(data), option=orjson.OPT_SERIALIZE_NUMPY)
        raise ProtocolViolation('a gateway message is {"attach": [...]}, {"detach": [...]} or {"frames": [...]}')

    @staticmethod
    def message(model: type[Attach | Detach], head: dict) -> Any:
        try:
            return model.model_validate(head)
        except ValidationError as exc:
            raise violation(model, exc) from None

    @staticmethod
    def attach_message(head: dict) -> tuple[list[str], float | BadInput | None]:
        """An attach's ids and frame rate. A bad rate (the ids being fine) is each stream's error, answered in
        its entry like any other field's; anything else wrong with the message is a protocol violation."""
        try:
            message = Attach.model_validate(head)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            if not all(error["loc"][:1] == ("fps",) for error in errors):
                raise violation(Attach, exc) from None
            return head["attach"], bad_input(errors[0])
        return message.attach, message.fps

    # --- attach ------------------------------------------------------------------------------
    async def attach(self, ids: list[str], fps: float | BadInput | None = None) -> dict:
        """Create or resume each stream (taken over from the shared store if held elsewhere) at ``fps``; its
        handle and next seq, or its error (a bad ``fps``: every stream's, counted once). A stream already
        attached keeps its handle."""
        if isinstance(fps, BadInput):
            refused = ErrorReply.of(self.answers.error(fps).error)
            return {"attached": [{"stream_id": stream_id, **refused} for stream_id in ids]}
        out = []
        for stream_id in ids:
            try:
                if stream_id not in self.handles and len(self.handles) >= MAX_ATTACHED:
                    raise BadInput("attach", f"a connection attaches at most {MAX_ATTACHED} streams")
                stream, _ = await self.engine.open(stream_id, self.tenant, fps)
            except ServiceError as exc:
                out.append({"stream_id": stream_id, **ErrorReply.of(self.answers.error(exc).error)})
                continue
            handle = self.handles.get(stream_id)
            if handle is None:
                handle = self.handles[stream_id] = len(self.streams)
                self.streams.append(stream)
                self.live.append(1)
            else:
                self.streams[handle] = stream
            out.append({"stream_id": stream_id, "handle": handle, "next_seq": stream.next_seq})
        return {"attached": out}  # :class:`Attached`

    def detach(self, ids: list[str]) -> list[str]:
        """Forget streams on this connection (they live on in the engine); their handles are not reused."""
        gone = []
        for stream_id in ids:
            handle = self.handles.pop(stream_id, None)
            if handle is not None:
                self.live[handle] = 0
                gone.append(stream_id)
        return gone

    def attached(self, stream_id: str) -> Stream:
        handle = self.handles.get(stream_id)
        if handle is None:
            raise BadInput("stream_id", "this stream is not attached to this connection: attach it first")
        return self.streams[handle]

    # --- JSON ticks -----------------------------------------------------------------------------
    async def json_tick(self, data: bytes | str, lookup: Any = None) -> dict:
        """A JSON tick's reply; ``lookup`` (``POST /v1/frames``) finds streams by id instead of attachment."""
        parsed, frames = self.services.wire.parse_tick(data)
        block = None if lookup or frames is None else self.json_block(parsed, frames)
        if block is not None:  # the usual tick: the engine takes it whole
            streams = block[0]
            results = await self.engine.tick_block(*block)
            if isinstance(results, Estimates):  # every entry answered at once
                ids, seqs = [item[0] for item in parsed], block[1].tolist()
                return {"results": stream_answers(ids, seqs, results, list(map(NEXT_SEQ, streams)))}
        else:
            entries = [await self.json_entry(item, lookup) for item in parsed]
            streams = [entry[0] if isinstance(entry, tuple) else None for entry in entries]
            results = await self.engine.tick(entries)
        out = []
        for item, stream, result in zip(parsed, streams, results, strict=True):
            stream_id, seq = item[0], item[1]
            if isinstance(result, BaseException):
                error = ErrorReply.of(self.answers.error(result).error)
                out.append(TickReply.failed(stream_id, seq, error))
            else:
                out.extend(stream_answers([stream_id], [seq], result[None], [stream.next_seq]))
        return {"results": out}

    async def json_entry(self, item: tuple, lookup: Any) -> Entry:
        """One parsed entry with its stream (found by ``lookup``, else attached here), or its refusal."""
        if isinstance(item[-1], BaseException):
            return item[-1]
        stream_id, seq, frames, reset = item
        try:
            stream = await lookup(stream_id) if lookup else self.attached(stream_id)
        except ServiceError as exc:
            return exc
        return (stream, seq, frames, reset)

    def json_block(
        self, parsed: list[tuple], frames: np.ndarray
    ) -> tuple[list[Stream], np.ndarray, np.ndarray, np.ndarray] | None:
        """A JSON tick whose entries are all valid and of one length (their ``frames`` one array) as
        :meth:`Engine.tick_block`'s arguments, if every entry names a stream attached here; else None (it goes
        entry by entry)."""
        handles, streams = self.handles, []
        for item in parsed:
            handle = handles.get(item[0])
            if handle is None:
                return None
            streams.append(self.streams[handle])
        seqs = np.fromiter((item[1] for item in parsed), np.int64, len(parsed))
        resets = np.fromiter((item[3] for item in parsed), bool, len(parsed))
        return streams, seqs, frames, resets

    # --- binary ticks ---------------------------------------------------------------------------
    async def binary_tick(self, data: bytes) -> bytes:
        if len(data) < MESSAGE_HEADER.size:
            raise ProtocolViolation(f"binary message shorter than its {MESSAGE_HEADER.size}-byte header")
        n, version = MESSAGE_HEADER.unpack_from(data)
        if version != VERSION:
            raise ProtocolViolation(f"binary tick version {version}; this server reads version {VERSION}")
        uniform = self.uniform(data, n)
        if uniform is not None:
            return await self.uniform_tick(uniform)
        return await self.mixed_tick(data, n)

    def uniform(self, data: bytes, n: int) -> np.ndarray | None:
        """The entries as records if every one carries the same number of frames (else None)."""
        if n == 0 or len(data) < MESSAGE_HEADER.size + ENTRY_HEADER.size:
            return None
        count = ENTRY_HEADER.unpack_from(data, MESSAGE_HEADER.size)[2]
        dtype = request_dtype(self.dim, count)
        if len(data) != MESSAGE_HEADER.size + n * dtype.itemsize:
            return None
        records = np.frombuffer(data, dtype, n, MESSAGE_HEADER.size)
        return records if (records["count"] == count).all() else None

    async def uniform_tick(self, records: np.ndarray) -> bytes:
        n, count = len(records), int(records["count"][0])
        emb = records["emb"]
        if count == 0 or count > self.max_frames or n > MAX_ATTACHED:
            results: list[Any] | None = None
            entries: list[Entry] = [self.entry_error(count, n) for _ in range(n)]
        elif self.all_valid(records):  # the usual message: no entry needs a closer look
            streams = [self.streams[h] for h in records["handle"].tolist()]
            answered = await self.engine.tick_block(streams, records["seq"], emb, records["flags"] == FLAG_RESET)
            if isinstance(answered, Estimates):  # every entry answered at once
                return self.uniform_reply(records, count, streams, answered)
            results = answered
            resets = (records["flags"] == FLAG_RESET).tolist()
            entries = list(zip(streams, records["seq"].tolist(), emb, resets, strict=True))
        else:
            results, bad = None, self.bad_values(emb)
            columns = zip(records["handle"].tolist(), records["seq"].tolist(), records["flags"].tolist(), strict=True)
            entries = [self.binary_entry(h, s, f, emb[i], bad, i) for i, (h, s, f) in enumerate(columns)]
        if results is None:
            results = await self.engine.tick(entries)
        return self.reply(records["handle"].tolist(), records["seq"].tolist(), entries, results)

    @staticmethod
    def uniform_reply(records: np.ndarray, count: int, streams: list[Stream], answers: Estimates) -> bytes:
        """The reply to entries all answered, ``count`` frames each, from their answers ``(entries, count)``:
        one record array for the entries, one for their trailer."""
        n = len(records)
        out = np.empty(n, reply_dtype(count))
        out["seq"], out["handle"], out["count"], out["status"] = records["seq"], records["handle"], count, 0
        out["next_seq"] = np.fromiter(map(NEXT_SEQ, streams), np.uint64, n)
        out["progress"] = answers.progress
        flags = reply_flags(answers)
        trailer = np.empty(n, trailer_dtype(count, flags))
        trailer["flags"] = flags
        for name in trailer.dtype.names[1:]:
            trailer[name] = getattr(answers, name)
        return MESSAGE_HEADER.pack(n, VERSION) + out.tobytes() + trailer.tobytes()

    async def mixed_tick(self, data: bytes, n: int) -> bytes:
        """Entries of different lengths: walked one by one (framing checked as they come)."""
        if n > MAX_ATTACHED:
            raise ProtocolViolation(f"a tick carries at most {MAX_ATTACHED} entries")
        offset, handles, seqs, entries = MESSAGE_HEADER.size, [], [], []
        for _ in range(n):
            if len(data) < offset + ENTRY_HEADER.size:
                raise ProtocolViolation("binary tick shorter than its entries' headers say")
            seq, handle, count, flags = ENTRY_HEADER.unpack_from(data, offset)
            offset += ENTRY_HEADER.size
            size = 4 * count * self.dim
            if len(data) < offset + size:
                raise ProtocolViolation(f"binary tick entry of {count} frames runs past the message's end")
            frames = np.frombuffer(data, "<f4", count * self.dim, offset).reshape(count, self.dim)
            offset += size
            handles.append(handle)
            seqs.append(seq)
            if count == 0 or count > self.max_frames:
                entries.append(self.entry_error(count, n))
                continue
            try:
                entries.append(self.binary_entry(handle, seq, flags, check_values(frames), None, 0))
            except BadInput as exc:
                entries.append(exc)
        if offset != len(data):
            raise ProtocolViolation(
                f"binary tick of {len(data)} bytes holds {len(data) - offset} bytes past its entries"
            )
        return self.reply(handles, seqs, entries, await self.engine.tick(entries))

    def entry_error(self, count: int, n: int) -> BadInput:
        if n > MAX_ATTACHED:
            return BadInput("entries", f"a tick carries at most {MAX_ATTACHED} entries")
        if count == 0:
            return BadInput("count", "count is 0: send at least one frame", code="empty")
        return TooManyFrames("count", f"count is {count}; at most {self.max_frames} frames per entry")

    def all_valid(self, records: np.ndarray) -> bool:
        """Every entry names an attached handle, known flags, a seq in range and finite values in range:
        checked over the whole message at once."""
        handles = records["handle"]
        return bool(
            (handles < len(self.streams)).all()
            and np.frombuffer(self.live, np.uint8)[handles].all()
            and (records["flags"] <= FLAG_RESET).all()  # bit 0 is the only flag
            and (records["seq"] <= MAX_SEQ).all()
            and self.bad_values(records["emb"]) is None
        )

    @staticmethod
    def bad_values(emb: np.ndarray) -> np.ndarray | None:
        """Which entries hold NaN, infinity or values beyond the bound (None: none, the usual answer,
        from one sum of squares over the whole message)."""
        if np.einsum("ijk,ijk->", emb, emb) <= MAX_ABS_VALUE**2:
            return None
        return ~(np.abs(emb) <= MAX_ABS_VALUE).all(axis=(1, 2))

    def binary_entry(
        self, handle: int, seq: int, flags: int, frames: np.ndarray, bad: np.ndarray | None, i: int
    ) -> Entry:
        if handle >= len(self.streams) or not self.live[handle]:
            return BadInput("handle", f"handle {handle} is not attached to this connection")
        if flags & ~FLAG_RESET:
            return BadInput("flags", f"unknown flag bits {flags & ~FLAG_RESET:#x} (known: reset = {FLAG_RESET})")
        if seq > MAX_SEQ:
            return BadInput("seq", f"seq must be at most {MAX_SEQ}")
        if bad is not None and bad[i]:
            return BadInput("embeddings", "the entry holds NaN, infinity or a value beyond ±1e6", code="not_finite")
        return (self.streams[handle], seq, frames, bool(flags & FLAG_RESET))

    def reply(self, handles: list[int], seqs: list[int], entries: list[Entry], results: list[Any]) -> bytes:
        """A binary reply entry by entry (some entries failed, their lengths differ, or their streams' frame
        rates: some answers carry seconds, some do not)."""
        parts, trailer = [MESSAGE_HEADER.pack(len(entries), VERSION)], []
        for handle, seq, entry, result in zip(handles, seqs, entries, results, strict=True):
            if isinstance(result, BaseException):
                answer = self.answers.error(result)
                expected = getattr(answer.error, "expected_seq", None)
                if expected is None:
                    expected = entry[0].next_seq if isinstance(entry, tuple) else 0
                parts.append(REPLY_ENTRY_HEADER.pack(seq, expected, handle, 0, STATUS[answer.error.code]))
                trailer.append(entry_trailer(None))
            else:
                parts.append(REPLY_ENTRY_HEADER.pack(seq, entry[0].next_seq, handle, len(result), 0))
                parts.append(result.progress.astype("<f4", copy=False).tobytes())
                trailer.append(entry_trailer(result))
        return b"".join(parts + trailer)


def violation(model: type[Attach | Detach], exc: ValidationError) -> ProtocolViolation:
    return ProtocolViolation(f"{model.__name__.lower()}: {str(exc).splitlines()[-1][:200]}")


class NativeGateway:
    """A gateway connection as the native plane drives a socket (:class:`.native.NativeSocket`, which answers
    one message at a time, in order): each message's answer is a task, whose result is the reply."""

    __slots__ = ("gateway", "latency")

    def __init__(self, gateway: GatewaySocket):
        self.gateway = gateway
        self.latency = gateway.latency

    def submit(self, data: bytes | str, binary: bool) -> asyncio.Future:
        return asyncio.get_running_loop().create_task(self.gateway.answer(data, binary))

    @staticmethod
    def reply(reply: bytes, binary: bool) -> bytes:
        return reply

    def error(self, exc: BaseException) -> tuple[bytes, int]:
        return self.gateway.error(exc)
