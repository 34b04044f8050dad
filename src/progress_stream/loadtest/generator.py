"""Load generator: N streams over WebSocket (JSON or binary messages) or HTTP, closed loop or paced; with
``streams_per_socket`` K > 1, K streams share each WebSocket through the gateway protocol (one message
per socket per tick carries a chunk of each of its streams).

Closed loop (``fps=0``): each stream sends its next message as soon as the previous reply arrives.
Paced (``fps>0``): each stream sends ``K`` frames every ``K/fps`` seconds on a fixed schedule, and
latency counts from the scheduled send time, so a server that falls behind shows it (no
coordinated omission). Messages are pre-encoded (only the seq changes), so the generator spends its
time on the sockets, not on building payloads. Every reply is checked: its ``seq``, ``next_seq``
and number of progress values must match the message. Bounded: it stops by itself after
``warmup + duration``, and it only targets loopback addresses unless ``allow_remote`` is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import orjson
from picows import WSCloseCode, WSFrame, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from progress_stream.client.core import json_bytes
from progress_stream.contract.binary import REPLY_HEADER, REQUEST_HEADER
from progress_stream.contract.gateway import (
    GATEWAY_SOCKET,
    MESSAGE_HEADER,
    decode_tick_reply,
    reply_dtype,
    request_dtype,
)
from progress_stream.contract.gateway import VERSION as GATEWAY_VERSION

#: picows logs each connection at INFO; a load test of thousands keeps only its warnings
LOG = logging.getLogger("picows.loadtest")
LOG.setLevel(logging.WARNING)
#: A stream whose server has not answered this long after the run's end counts as a connection error.
SILENCE_S = 30.0

Transport = Literal["ws", "http"]


class LoadTestError(ValueError):
    """The load test was asked for something it refuses to do."""


@dataclass(frozen=True)
class LoadSpec:
    url: str
    streams: int = 100
    frames_per_message: int = 16
    transport: Transport = "ws"
    binary: bool = True  # WebSocket only; HTTP bodies are JSON
    fps: float = 0.0  # frames per second per stream; 0: closed loop
    duration: float = 10.0
    warmup: float = 2.0
    dim: int | None = None  # None: asked from the server's GET /v1/model
    api_key: str | None = None
    allow_remote: bool = False
    streams_per_socket: int = 1  # > 1: the gateway protocol (/v1/ws), WebSocket only


@dataclass
class LoadResult:
    url: str
    transport: str
    format: str
    streams: int
    frames_per_message: int
    target_fps_per_stream: float
    seconds: float
    messages: int
    frames: int
    frames_per_s: float
    messages_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int]
    bad_replies: int
    streams_per_socket: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def summary(self) -> str:
        errors = ", ".join(f"{code}: {n}" for code, n in sorted(self.errors.items())) or "none"
        pace = f"{self.target_fps_per_stream:g} frames/s per stream" if self.target_fps_per_stream else "closed loop"
        shared = f", {self.streams_per_socket} streams per socket" if self.streams_per_socket > 1 else ""
        return "\n".join(
            [
                f"{self.transport} {self.format} → {self.url}: {self.streams} streams × {self.frames_per_message} "
                f"frames/message{shared}, {pace}, {self.seconds:.1f} s measured",
                f"throughput  {self.frames_per_s:,.0f} frames/s  ({self.messages_per_s:,.0f} messages/s)",
                f"latency ms  p50 {self.p50_ms:.2f}  p95 {self.p95_ms:.2f}  p99 {self.p99_ms:.2f}  "
                f"max {self.max_ms:.2f}",
                f"errors      {errors};  replies with a wrong seq/next_seq/count: {self.bad_replies}",
            ]
        )


@dataclass
class _Stats:
    latencies: list[float] = field(default_factory=list)
    frames: int = 0
    errors: Counter = field(default_factory=Counter)
    bad_replies: int = 0


def require_loopback(url: str) -> None:
    """Refuse a target whose host is not (or does not resolve only to) loopback addresses."""
    host = urlsplit(url).hostname
    if not host:
        raise LoadTestError(f"{url!r} has no host")
    try:
        addresses = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise LoadTestError(f"cannot resolve {host!r}: {exc}") from exc
    remote = sorted(str(a) for a in addresses if not a.is_loopback)
    if remote:
        raise LoadTestError(
            f"{host} is not a loopback address ({', '.join(remote)}); the load test only targets this machine "
            "unless allowed explicitly (--allow-remote) for a server you operate"
        )


def with_scheme(url: str, transport: Transport) -> str:
    """``ws://`` for WebSocket, ``http://`` for HTTP, whichever of the two the URL was given with."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    scheme = {"ws": "wss" if secure else "ws", "http": "https" if secure else "http"}[transport]
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class Reply(NamedTuple):
    """What a stream learns from one answer: the reply's fields, or an error code and where to resume."""

    seq: int = -1
    next_seq: int = -1
    count: int = 0
    error: str | None = None
    expected_seq: int | None = None


def error_reply(obj: object, status: int | str) -> Reply:
    """An error answer; ``status`` names it when the body is not the service's error JSON (a proxy's page)."""
    err = obj.get("error") if isinstance(obj, dict) else None
    if not isinstance(err, dict):
        return Reply(error=f"http_{status}")
    return Reply(error=err.get("code", "unknown"), expected_seq=err.get("expected_seq"))


def json_reply(text: str | bytes, status: int | str = 200) -> Reply:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Reply(error=f"http_{status}")
    if status != 200 or "error" in obj:
        return error_reply(obj, status)
    return Reply(obj["seq"], obj["next_seq"], len(obj["progress"]))


def check_reply(seq: int, frames: int, reply: Reply) -> bool:
    """A reply answers its message: same seq, one progress value per frame, next_seq right after it."""
    return reply.seq == seq and reply.count == frames and reply.next_seq == seq + frames


class _Driver:
    """One stream: send, await the reply, check it, record; until the deadline."""

    def __init__(self, spec: LoadSpec, stats: _Stats, measure_from: float, until: float, x: np.ndarray):
        self.spec, self.stats, self.measure_from, self.until = spec, stats, measure_from, until
        self.k = spec.frames_per_message
        self.body = x.tobytes() if spec.binary else json_bytes(x).decode()  # as the client writes it
        self.interval = self.k / spec.fps if spec.fps else 0.0

    def payload(self, seq: int) -> str:
        """A JSON message (binary ones are packed in place by :class:`_SocketDriver`)."""
        return f'{{"seq":{seq},"embeddings":{self.body}}}'

    def record(self, seq: int, reply: Reply, sent: float, done: float) -> int:
        """Count the answer to message ``seq``, sent (or due, when paced) at ``sent``; the seq to send next."""
        if reply.error is not None:  # count it, resume where the server says
            self.stats.errors[reply.error] += 1
            return reply.expected_seq if reply.expected_seq is not None else seq
        if not check_reply(seq, self.k, reply):
            self.stats.bad_replies += 1
        if sent >= self.measure_from and done <= self.until:
            self.stats.latencies.append(done - sent)
            self.stats.frames += self.k
        return reply.next_seq

    async def run(self, exchange: Callable[[int], Awaitable[Reply]]) -> None:
        """Await each answer (HTTP); the WebSocket is driven from callbacks by :class:`_SocketDriver`."""
        seq = 0
        due = time.perf_counter() + random.uniform(0, self.interval)  # paced streams start out of phase
        while True:
            if self.interval:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            now = time.perf_counter()
            if now >= self.until:  # a paced stream that fell behind stops at the end too
                return
            sent = due if self.interval else now
            seq = self.record(seq, await exchange(seq), sent, time.perf_counter())
            due += self.interval


class _PacedSocket(WSListener):
    """A socket driven from its callbacks (no task or coroutine per message, so one core drives the tens
    of thousands of messages per second a served core can answer): send, read the answer, send the next
    one at once (closed loop) or when it is due (paced, on a fixed schedule), until the window's end."""

    def __init__(self, driver: _Driver, done: asyncio.Future):
        self.driver, self.stats, self.done = driver, driver.stats, done
        self.k = driver.k
        self.binary = isinstance(driver.body, bytes)
        self.loop = asyncio.get_running_loop()
        self.transport: WSTransport | None = None
        self.sent = 0.0  # when the message in flight was due (paced) or sent (closed loop)
        self.due = 0.0
        self.closing = False  # a close this side began, or the server's close frame: not a dropped connection

    def start(self) -> None:
        self.due = time.perf_counter() + random.uniform(0, self.driver.interval)  # paced sockets start out of phase
        self.loop.call_at(self.loop.time() + (self.due - time.perf_counter()), self.send)

    def send(self) -> None:
        now = time.perf_counter()
        self.sent = self.due if self.driver.interval else now
        if now >= self.driver.until:  # a paced socket that fell behind stops at the end too
            self.close()
            return
        self.write()

    def close(self) -> None:
        self.closing = True
        self.transport.send_close(WSCloseCode.OK)
        self.transport.disconnect()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            if code is not WSCloseCode.OK:
                self.stats.errors[f"closed: {code.value}"] += 1
            self.closing = True
            transport.disconnect()
            return
        if self.answered(frame, time.perf_counter()):
            self.next()

    def next(self) -> None:
        if not self.driver.interval:
            self.send()
            return
        self.due += self.driver.interval
        wait = self.due - time.perf_counter()
        if wait <= 0:
            self.send()
        else:
            self.loop.call_at(self.loop.time() + wait, self.send)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closing and time.perf_counter() < self.driver.until:  # the server went away unannounced
            self.stats.errors["connection: dropped"] += 1
        if not self.done.done():
            self.done.set_result(None)

    def write(self) -> None:
        raise NotImplementedError

    def answered(self, frame: WSFrame, done: float) -> bool:
        """Check and count an answer; whether the next message is due."""
        raise NotImplementedError


class _SocketDriver(_PacedSocket):
    """One stream over its own socket."""

    path = "/v1/streams/lt-{}/ws"

    def __init__(self, driver: _Driver, done: asyncio.Future):
        super().__init__(driver, done)
        self.message = bytearray(REQUEST_HEADER.size) + driver.body if self.binary else None
        self.seq = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.start()

    def write(self) -> None:
        if self.binary:
            REQUEST_HEADER.pack_into(self.message, 0, self.seq, self.k, 0)
            self.transport.send(WSMsgType.BINARY, self.message)
        else:
            self.transport.send(WSMsgType.TEXT, self.driver.payload(self.seq).encode())

    def answered(self, frame: WSFrame, done: float) -> bool:
        if frame.msg_type is WSMsgType.BINARY:
            reply = Reply(*REPLY_HEADER.unpack_from(frame.get_payload_as_memoryview())[:3])
        else:
            reply = json_reply(frame.get_payload_as_bytes())
        self.seq = self.driver.record(self.seq, reply, self.sent, done)
        return True


class _GatewayDriver(_PacedSocket):
    """K streams over one gateway socket: attach, then one tick message per period carrying a chunk of
    every stream, every entry of every reply checked (vectorised for binary)."""

    path = GATEWAY_SOCKET

    def __init__(self, driver: _Driver, done: asyncio.Future, streams: int):
        super().__init__(driver, done)
        self.n = streams
        self.ids = [f"lt-{secrets.token_hex(8)}" for _ in range(streams)]
        self.seqs = np.zeros(streams, np.uint64)
        self.attached = False
        if self.binary:
            dim = len(driver.body) // (4 * self.k)
            self.records = np.zeros(streams, request_dtype(dim, self.k))
            self.records["handle"], self.records["count"] = np.arange(streams), self.k
            self.records["emb"] = np.frombuffer(driver.body, "<f4").reshape(self.k, dim)
            self.header = MESSAGE_HEADER.pack(streams, GATEWAY_VERSION)
        else:
            self.entries = [f'{{"stream_id":"{sid}","seq":%d,"embeddings":{driver.body}}}' for sid in self.ids]

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        transport.send(WSMsgType.TEXT, orjson.dumps({"attach": self.ids}))

    def write(self) -> None:
        if self.binary:
            self.records["seq"] = self.seqs
            self.transport.send(WSMsgType.BINARY, self.header + self.records.tobytes())
        else:
            ticks = ",".join(entry % seq for entry, seq in zip(self.entries, self.seqs.tolist(), strict=True))
            self.transport.send(WSMsgType.TEXT, f'{{"frames":[{ticks}]}}'.encode())

    def answered(self, frame: WSFrame, done: float) -> bool:
        if not self.attached:  # the answer to the attach: the ticks begin, for the streams it attached
            self.attached = True
            attached = orjson.loads(frame.get_payload_as_bytes())["attached"]
            for error in (e["error"]["code"] for e in attached if "error" in e):
                self.stats.errors[error] += 1  # counted once: a refused stream is left out of the ticks
            self.keep({i: e["handle"] for i, e in enumerate(attached) if "error" not in e})
            if self.n:
                self.start()
            else:
                self.close()
            return False
        data = frame.get_payload_as_bytes()
        ok = self.check_binary(data) if frame.msg_type is WSMsgType.BINARY else self.check_json(data)
        if ok and self.sent >= self.driver.measure_from and done <= self.driver.until:
            self.stats.latencies.append(done - self.sent)
            self.stats.frames += ok * self.k
        return True

    def keep(self, handles: dict[int, int]) -> None:
        """Tick only the streams attached (entry ``i`` of the attach → its handle)."""
        kept = list(handles)
        self.n = len(kept)
        self.seqs = self.seqs[kept]
        if self.binary:
            self.records = self.records[kept]
            self.records["handle"] = list(handles.values())
            self.header = MESSAGE_HEADER.pack(self.n, GATEWAY_VERSION)
        else:
            self.entries = [self.entries[i] for i in kept]

    def check_binary(self, data: bytes) -> int:
        """Count and check every entry; the streams' next seqs; how many entries were answered."""
        n = MESSAGE_HEADER.unpack_from(data)[0]
        plain = reply_dtype(self.k)
        if n == self.n and len(data) >= MESSAGE_HEADER.size + n * plain.itemsize:  # the entries, then their trailer
            out = np.frombuffer(data, plain, n, MESSAGE_HEADER.size)
            if not out["status"].any():
                good = (out["seq"] == self.seqs) & (out["count"] == self.k) & (out["next_seq"] == self.seqs + self.k)
                self.stats.bad_replies += int(n - good.sum())
                self.seqs = out["next_seq"].copy()
                return n
        answered = 0
        for i, (_, seq, next_seq, code, progress) in enumerate(decode_tick_reply(data)):
            if code is not None:
                self.stats.errors[code] += 1
            elif seq != self.seqs[i] or len(progress) != self.k or next_seq != seq + self.k:
                self.stats.bad_replies += 1
            else:
                answered += 1
            self.seqs[i] = next_seq
        return answered

    def check_json(self, data: bytes) -> int:
        body = orjson.loads(data)
        if "results" not in body:  # an error about the whole message (the socket closes after it)
            self.stats.errors[error_reply(body, "gateway").error] += 1
            return 0
        answered = 0
        for i, result in enumerate(body["results"]):
            if "error" in result:
                error = error_reply(result, "gateway")
                self.stats.errors[error.error] += 1
                if error.expected_seq is not None:
                    self.seqs[i] = error.expected_seq
                continue
            reply = Reply(result["seq"], result["next_seq"], len(result["progress"]))
            if check_reply(int(self.seqs[i]), self.k, reply):
                answered += 1
            else:
                self.stats.bad_replies += 1
            self.seqs[i] = reply.next_seq
        return answered


async def _ws_socket(listener: type[_PacedSocket], driver: _Driver, headers: dict, *args: object) -> None:
    """Connect one socket of ``listener`` and wait until it is done; a refused handshake is counted."""
    done = asyncio.get_running_loop().create_future()
    try:
        transport, _ = await ws_connect(
            lambda: listener(driver, done, *args),
            f"{driver.spec.url}{listener.path.format(secrets.token_hex(8))}",
            extra_headers=headers,
            websocket_handshake_timeout=30,
            max_frame_size=2**31 - 1,
            logger_name=LOG,
        )
    except WSHandshakeError as exc:  # a refused handshake carries the service's error body
        if exc.response is None or exc.raw_body is None:
            raise
        driver.stats.errors[json_reply(exc.raw_body, exc.response.status).error] += 1
        return
    try:  # a server that stops answering fails the socket, not the whole run
        await asyncio.wait_for(done, max(0.0, driver.until - time.perf_counter()) + SILENCE_S)
    finally:
        transport.disconnect()


async def _http_stream(driver: _Driver, headers: dict, tls: ssl.SSLContext) -> None:
    """One client (one keep-alive connection) per stream: httpx's shared pool scans every connection
    on every request, which made a 20-stream load test client-bound at ~600 requests/s."""
    stream_id = f"lt-{secrets.token_hex(8)}"
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(
        base_url=driver.spec.url, headers=headers, limits=limits, timeout=30, verify=tls
    ) as client:
        created = await client.put(f"/v1/streams/{stream_id}")
        if created.status_code not in (200, 201):
            driver.stats.errors[json_reply(created.content, created.status_code).error] += 1
            return
        json_type = {"content-type": "application/json"}

        async def exchange(seq: int) -> Reply:
            response = await client.post(
                f"/v1/streams/{stream_id}/frames", content=driver.payload(seq), headers=json_type
            )
            return json_reply(response.content, response.status_code)

        await driver.run(exchange)


async def _guarded(stats: _Stats, stream: Awaitable[None]) -> None:
    """A stream that cannot connect or loses its connection counts as an error, not a crash."""
    try:
        await stream
    except Exception as exc:
        stats.errors[f"connection: {type(exc).__name__}"] += 1


async def served_dim(http_url: str, headers: dict) -> int:
    """The served model's embedding size, from ``GET /v1/model``."""
    async with httpx.AsyncClient(base_url=http_url, headers=headers, timeout=30) as client:
        response = await client.get("/v1/model")
    if response.status_code != 200:
        raise LoadTestError(f"GET /v1/model answered {response.status_code}: {response.text[:200]}")
    return int(response.json()["embedding_dim"])


async def run_load(spec: LoadSpec) -> LoadResult:
    """Drive ``spec.streams`` concurrent streams at ``spec.url`` and measure them."""
    if spec.transport == "http" and spec.binary:
        raise LoadTestError("HTTP bodies are JSON: binary messages need --transport ws")
    if spec.streams_per_socket > 1 and spec.transport != "ws":
        raise LoadTestError("streams share a socket through the WebSocket gateway: --transport ws")
    spec = replace(spec, url=with_scheme(spec.url, spec.transport))
    if not spec.allow_remote:
        require_loopback(spec.url)
    headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
    dim = spec.dim or await served_dim(with_scheme(spec.url, "http"), headers)
    x = np.random.default_rng(0).standard_normal((spec.frames_per_message, dim)).astype("<f4")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    stats = _Stats()
    start = time.perf_counter()
    measure_from, until = start + spec.warmup, start + spec.warmup + spec.duration
    drivers = [_Driver(spec, stats, measure_from, until, x) for _ in range(spec.streams)]
    if spec.streams_per_socket > 1:
        per = spec.streams_per_socket
        sockets = [(drivers[i], min(per, spec.streams - i)) for i in range(0, spec.streams, per)]
        await asyncio.gather(*(_guarded(stats, _ws_socket(_GatewayDriver, d, headers, n)) for d, n in sockets))
    elif spec.transport == "ws":
        await asyncio.gather(*(_guarded(stats, _ws_socket(_SocketDriver, d, headers)) for d in drivers))
    else:
        tls = ssl.create_default_context()  # one for all clients: each costs ~20 ms to build
        await asyncio.gather(*(_guarded(stats, _http_stream(d, headers, tls)) for d in drivers))
    elapsed = spec.duration  # streams that stopped early (errors) still count against the full window
    lat = np.array(stats.latencies) * 1e3 if stats.latencies else np.array([np.nan])
    p50, p95, p99 = np.percentile(lat, [50, 95, 99])
    return LoadResult(
        url=spec.url,
        transport=spec.transport,
        format="binary" if spec.binary else "JSON",
        streams=spec.streams,
        frames_per_message=spec.frames_per_message,
        target_fps_per_stream=spec.fps,
        seconds=elapsed,
        messages=len(stats.latencies),
        frames=stats.frames,
        frames_per_s=stats.frames / elapsed,
        messages_per_s=len(stats.latencies) / elapsed,
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        max_ms=float(lat.max()),
        errors=dict(stats.errors),
        bad_replies=stats.bad_replies,
        streams_per_socket=spec.streams_per_socket,
    )
