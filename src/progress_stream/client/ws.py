"""WebSocket sessions (async and sync) for one stream: binary or JSON, reconnect and replay on drops.

The state belongs to the stream, not the connection: after a drop the session reconnects and
re-sends the chunk (a retry of an already processed ``seq`` is answered from the server's window).
"""

from __future__ import annotations

import asyncio
from typing import Any, Self
from urllib.parse import urlencode

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus
from websockets.sync.client import ClientConnection as SyncConnection
from websockets.sync.client import connect as sync_connect

from progress_stream.client.core import (
    RETRY_DELAY,
    TIMEOUT,
    Chunk,
    Outcome,
    SessionState,
    drive,
    drive_async,
    error_outcome,
    exchange,
    frames_json,
    json_bytes,
)
from progress_stream.client.http import PROXY_GATEWAY_ERRORS, ServerError, auth_headers
from progress_stream.contract.binary import binary_request, parse_binary_reply
from progress_stream.contract.replies import Estimates


def encode(chunk: Chunk, binary: bool) -> bytes | str:
    if binary:
        return binary_request(chunk.seq, chunk.frames, chunk.reset)
    return json_bytes(frames_json(chunk)).decode()


def decode(message: bytes | str) -> Outcome:
    if isinstance(message, bytes):
        return "ok", parse_binary_reply(message)[2]
    body = orjson.loads(message)
    if "progress" in body:
        return "ok", Estimates.read(body)
    action = error_outcome(body)
    if action is None:
        raise ServerError.of(body)
    return action


def dropped(exc: Exception) -> Outcome:
    """A connection that failed: a refused handshake as the error table says, anything else reconnects."""
    return refused(exc) if isinstance(exc, InvalidStatus) else ("wait", RETRY_DELAY)


#: What ends a connection without ending the session (:func:`dropped` says what to do next): a refused
#: handshake, a handshake the peer closed without answering (a server stopping, a TCP balancer), a drop.
DROPPED = (InvalidStatus, InvalidMessage, ConnectionClosed, OSError, TimeoutError)


def refused(exc: InvalidStatus) -> Outcome:
    """A refused handshake: wait and retry where the error table says so (a full table), else raise."""
    try:
        body = orjson.loads(exc.response.body or b"")
    except orjson.JSONDecodeError:
        body = None
    action = error_outcome(body, exc.response.headers.get("Retry-After"))
    if action is None and exc.response.status_code in PROXY_GATEWAY_ERRORS:
        return "wait", RETRY_DELAY
    if action is None:
        raise ServerError(exc.response.status_code, body) from None
    return action


class Link:
    """One reconnecting WebSocket to ``url`` (asyncio): connected on first use, dropped when it fails.

    ``timeout`` bounds the handshake and the wait for each reply: a server that stalls (stopped, or
    its link silently gone) counts as a drop, so the chunk is sent again on a new connection.
    """

    url: str
    headers: dict[str, str]
    timeout: float
    conn: ClientConnection | None

    async def _connect(self) -> None:
        self.conn = await connect(
            self.url, additional_headers=self.headers, compression=None, max_size=None, open_timeout=self.timeout
        )

    def _drop(self) -> None:
        """Abort the connection (no closing handshake: the peer may be the one stalling) and forget it."""
        if self.conn is not None:
            self.conn.transport.abort()
        self.conn = None

    async def _round_trip(self, message: bytes | str) -> bytes | str:
        """Send ``message`` and return the reply; a connection that fails (:data:`DROPPED`) is dropped and
        the error raised, for the caller's :func:`dropped`."""
        try:
            if self.conn is None:
                await self._connect()
            await self.conn.send(message)
            async with asyncio.timeout(self.timeout):
                return await self.conn.recv()
        except DROPPED:
            self._drop()
            raise

    async def aclose(self) -> None:
        if self.conn is not None:
            await self.conn.close()


class SyncLink:
    """The blocking twin of :class:`Link`; a context manager that closes it."""

    url: str
    headers: dict[str, str]
    timeout: float
    conn: SyncConnection | None

    def _connect(self) -> None:
        self.conn = sync_connect(
            self.url,
            additional_headers=self.headers,
            compression=None,
            max_size=None,
            open_timeout=self.timeout,
            legacy=True,
        )

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close_socket()
        self.conn = None

    def _round_trip(self, message: bytes | str) -> bytes | str:
        try:
            if self.conn is None:
                self._connect()
            self.conn.send(message)
            return self.conn.recv(timeout=self.timeout)
        except DROPPED:
            self._drop()
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WsSession(SessionState):
    """``fps``: the stream's frame rate (every answer then carries the time to finish in seconds too), named
    in every handshake. ``timeout``: seconds to wait for the handshake and for each reply (as the HTTP
    session's) before the connection counts as dropped."""

    def __init__(
        self,
        url: str,
        stream_id: str | None = None,
        api_key: str | None = None,
        binary: bool = True,
        history: int = 4096,
        fps: float | None = None,
        timeout: float = TIMEOUT,
    ):
        super().__init__(stream_id, history)
        self.timeout = timeout
        query = "" if fps is None else f"?{urlencode({'fps': fps})}"
        self.url = f"{url.rstrip('/')}/v1/streams/{self.stream_id}/ws{query}"
        self.headers = auth_headers(api_key)
        self.binary = binary
        self.conn: ClientConnection | SyncConnection | None = None


class WsStreamSession(_WsSession, Link):
    """``s = await WsStreamSession.open("ws://host:8000")``; ``await s.send(embeddings)``."""

    @classmethod
    async def open(cls, url: str, **kwargs: Any) -> WsStreamSession:
        session = cls(url, **kwargs)
        await session._connect()
        return session

    async def send(self, embeddings: Any, reset: bool = False) -> Estimates:
        chunk = self.new_chunk(embeddings, reset)
        with self.sending(chunk):
            return await drive_async(exchange(self.log, chunk), self._transact)

    async def _transact(self, chunk: Chunk) -> Outcome:
        try:
            return decode(await self._round_trip(encode(chunk, self.binary)))
        except DROPPED as exc:
            return dropped(exc)


class SyncWsStreamSession(_WsSession, SyncLink):
    """Blocking twin: ``with SyncWsStreamSession("ws://host:8000") as s: s.send(embeddings)``."""

    def __init__(self, url: str, **kwargs: Any):
        super().__init__(url, **kwargs)
        self._connect()

    def send(self, embeddings: Any, reset: bool = False) -> Estimates:
        chunk = self.new_chunk(embeddings, reset)
        with self.sending(chunk):
            return drive(exchange(self.log, chunk), self._transact)

    def _transact(self, chunk: Chunk) -> Outcome:
        try:
            return decode(self._round_trip(encode(chunk, self.binary)))
        except DROPPED as exc:
            return dropped(exc)
