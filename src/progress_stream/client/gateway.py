"""A gateway client: many streams over one WebSocket (see :mod:`progress_stream.contract.gateway`), with
the same guarantees as one stream's session: every stream numbers its frames, keeps a replay log, and
after a conflict, a reconnect or a server's restart resends exactly what the server lacks.

``gw = await Gateway.open("ws://host:8000")``; ``await gw.attach("cam-1", "cam-2", fps=30)``;
``answers = await gw.tick({"cam-1": x1, "cam-2": x2})`` → ``{"cam-1": Estimates, "cam-2": Estimates}``.
:class:`SyncGateway` is the blocking twin.
"""

from __future__ import annotations

from collections.abc import Collection, Generator, Mapping
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.sync.client import ClientConnection as SyncConnection

from progress_stream.client.core import (
    TIMEOUT,
    Chunk,
    Outcome,
    SessionState,
    chunk_frames,
    drive,
    drive_async,
    error_outcome,
    exchange,
    frames_json,
    json_bytes,
    waited,
)
from progress_stream.client.http import ServerError, auth_headers
from progress_stream.client.ws import DROPPED, Link, SyncLink, dropped
from progress_stream.contract.errors import ERRORS
from progress_stream.contract.gateway import GATEWAY_SOCKET, decode_tick_reply, encode_entries
from progress_stream.contract.replies import Estimates

Entries = list[tuple[str, Chunk]]


class TickError(ServerError):
    """Entries of a tick the server refused (an error a resend cannot fix), in ``errors`` by stream; the other
    streams' chunks were taken and answered, in ``answers``. Its status and body are the first refusal's."""

    def __init__(self, errors: dict[str, ServerError], answers: dict[str, Estimates]):
        first = next(iter(errors.values()))
        super().__init__(first.status, first.body)
        self.errors, self.answers = errors, answers


def tick_steps(
    streams: Mapping[str, SessionState], frames: Mapping[str, Any], resets: Collection[str]
) -> Generator[Entries, list[Outcome], dict[str, Estimates]]:
    """The retry protocol of one tick, transport-free: yields the entries to send (one chunk per stream
    still owed an answer), is sent back their outcomes in order, returns each stream's answers; raises
    :class:`TickError` once every other stream is answered if the server refused some."""
    checked = {sid: chunk_frames(x) for sid, x in frames.items()}  # all of them, before any stream takes a seq
    chunks = {sid: streams[sid].next_chunk(x, sid in resets) for sid, x in checked.items()}
    steps = {sid: exchange(streams[sid].log, chunk) for sid, chunk in chunks.items()}
    pending = {sid: next(step) for sid, step in steps.items()}
    done: dict[str, Estimates] = {}
    refused: dict[str, ServerError] = {}
    while pending:
        outcomes = yield list(pending.items())
        following = {}
        for sid, outcome in zip(pending, outcomes, strict=True):
            if outcome[0] == "refused":
                streams[sid].refused(chunks[sid], outcome[1])
                refused[sid] = outcome[1]
                continue
            try:
                following[sid] = steps[sid].send(outcome)
            except StopIteration as finished:
                done[sid] = finished.value
        pending = following
    if refused:
        raise TickError(refused, done)
    return done


def longest_wait(outcomes: list[Outcome]) -> float:
    """A tick waits as long as its longest-waiting entry asks."""
    return max(map(waited, outcomes), default=0.0)


def entry_outcome(error: dict | None, expected_seq: int | None, answers: Estimates | None) -> Outcome:
    if error is None:
        return "ok", answers
    if ERRORS.get(error.get("code"), None) is not None and "expected_seq" not in error and expected_seq is not None:
        error = {**error, "expected_seq": expected_seq}
    action = error_outcome({"error": error})
    return ("refused", ServerError.of({"error": error})) if action is None else action


class _Gateway:
    def __init__(
        self, url: str, api_key: str | None = None, binary: bool = True, history: int = 4096, timeout: float = TIMEOUT
    ):
        self.url = f"{url.rstrip('/')}{GATEWAY_SOCKET}"
        self.timeout = timeout  # seconds for the handshake and each reply, as a stream session's
        self.headers = auth_headers(api_key)
        self.binary = binary
        self.history = history
        self.streams: dict[str, SessionState] = {}
        self.handles: dict[str, int] = {}
        self.rates: dict[str, float] = {}  # the frame rate each stream was attached with, if any
        self.conn: ClientConnection | SyncConnection | None = None

    def _attach_messages(self, ids: Collection[str], fps: float | None = None) -> list[tuple[str, float | None]]:
        """The messages that attach ``ids`` at ``fps`` (None: each at the rate it was attached with before,
        one message per rate: a reconnect names every stream's rate again), each with its rate."""
        groups: dict[float | None, list[str]] = {}
        for sid in ids:
            groups.setdefault(fps if fps is not None else self.rates.get(sid), []).append(sid)
        return [
            (orjson.dumps({"attach": group} if rate is None else {"attach": group, "fps": rate}).decode(), rate)
            for rate, group in groups.items()
        ]

    def _attached(self, reply: bytes | str, fps: float | None) -> dict[str, int]:
        """Record handles and, once the server took it, the rate ``fps`` each was attached at; a stream this
        client has not sent on yet starts at the server's next seq. Raises the first refusal once the others
        are recorded (a refused stream has no handle: the next tick attaches it again)."""
        out, refusals = {}, []
        for entry in orjson.loads(reply)["attached"]:
            if "error" in entry:
                refusals.append(entry)
                continue
            sid = entry["stream_id"]
            if fps is not None:
                self.rates[sid] = fps
            self.handles[sid] = entry["handle"]
            state = self.streams.setdefault(sid, SessionState(sid, self.history))
            if state.next_seq == 0:
                state.next_seq = entry["next_seq"]
            out[sid] = entry["next_seq"]
        if refusals:
            raise ServerError.of(refusals[0])
        return out

    def _unattached(self, entries: Entries) -> list[str]:
        return [sid for sid, _ in entries if sid not in self.handles]

    def _failed(self, exc: Exception, entries: Entries) -> list[Outcome]:
        """Every entry's outcome when the connection dropped, or an attach (or the whole message) was refused:
        reconnect or wait where the error table says so, else raise."""
        if isinstance(exc, DROPPED):
            self._drop()
            return [dropped(exc)] * len(entries)
        action = error_outcome(exc.body) if isinstance(exc, ServerError) else None
        if action is None:
            raise exc
        return [action] * len(entries)

    def _encode(self, entries: Entries) -> bytes | str:
        if self.binary:
            return encode_entries([(self.handles[sid], c.seq, c.frames, c.reset) for sid, c in entries])
        return json_bytes({"frames": [{"stream_id": sid, **frames_json(c)} for sid, c in entries]}).decode()

    @staticmethod
    def _decode(reply: bytes | str) -> list[Outcome]:
        if isinstance(reply, bytes):
            return [
                entry_outcome(None if code is None else {"code": code}, next_seq, answers)
                for _, _, next_seq, code, answers in decode_tick_reply(reply)
            ]
        body = orjson.loads(reply)
        if "results" not in body:
            raise ServerError.of(body)
        return [
            entry_outcome(r.get("error"), r.get("next_seq"), None if "error" in r else Estimates.read(r))
            for r in body["results"]
        ]


class Gateway(_Gateway, Link):
    """Many streams over one WebSocket (asyncio)."""

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> Gateway:
        gateway = cls(url, **kwargs)
        await gateway._connect()
        return gateway

    async def _connect(self) -> None:
        """Connect, and attach every stream again: a new connection numbers its streams anew."""
        await super()._connect()
        self.handles.clear()
        if self.streams:
            await self._attach(list(self.streams))

    async def _attach(self, ids: Collection[str], fps: float | None = None) -> dict[str, int]:
        attached = {}
        for message, rate in self._attach_messages(ids, fps):
            attached |= self._attached(await self._round_trip(message), rate)
        return attached

    async def attach(self, *ids: str, fps: float | None = None) -> dict[str, int]:
        """Create or resume these streams on this connection (at ``fps`` frames a second: their answers then
        carry seconds too); each one's next seq."""
        if self.conn is None:
            await self._connect()
        return await self._attach(ids, fps)

    async def tick(self, frames: Mapping[str, Any], resets: Collection[str] = ()) -> dict[str, Estimates]:
        """Send one chunk per stream (attached first if new); the answers of each stream's chunk."""
        if new := [sid for sid in frames if sid not in self.handles]:
            await self.attach(*new)
        return await drive_async(tick_steps(self.streams, frames, resets), self._transact, longest_wait)

    async def _transact(self, entries: Entries) -> list[Outcome]:
        """One round trip of ``entries``, encoded once the connection and its handles are there."""
        try:
            if self.conn is None:
                await self._connect()
            if unattached := self._unattached(entries):
                await self._attach(unattached)
            return self._decode(await self._round_trip(self._encode(entries)))
        except (*DROPPED, ServerError) as exc:
            return self._failed(exc, entries)


class SyncGateway(_Gateway, SyncLink):
    """Blocking twin: ``with SyncGateway("ws://host:8000") as gw: gw.tick({...})``."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._connect()

    def _connect(self) -> None:
        super()._connect()
        self.handles.clear()
        if self.streams:
            self._attach(list(self.streams))

    def _attach(self, ids: Collection[str], fps: float | None = None) -> dict[str, int]:
        attached = {}
        for message, rate in self._attach_messages(ids, fps):
            attached |= self._attached(self._round_trip(message), rate)
        return attached

    def attach(self, *ids: str, fps: float | None = None) -> dict[str, int]:
        if self.conn is None:
            self._connect()
        return self._attach(ids, fps)

    def tick(self, frames: Mapping[str, Any], resets: Collection[str] = ()) -> dict[str, Estimates]:
        if new := [sid for sid in frames if sid not in self.handles]:
            self.attach(*new)
        return drive(tick_steps(self.streams, frames, resets), self._transact, longest_wait)

    def _transact(self, entries: Entries) -> list[Outcome]:
        try:
            if self.conn is None:
                self._connect()
            if unattached := self._unattached(entries):
                self._attach(unattached)
            return self._decode(self._round_trip(self._encode(entries)))
        except (*DROPPED, ServerError) as exc:
            return self._failed(exc, entries)
