"""Memory and files a single connection can take, against a real server (issue 19, items 1-5, 9c, 9d).

Raw sockets where a well-behaved client library would never send what is tested: header floods,
empty continuation frames, unanswered pings, replies left unread.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from progress_stream.server.process import ServerProcess
from tests.server.test_edge import memory_kb, raw_exchange, status_and_body

TEXT, BINARY, CONTINUATION, CLOSE, PING = 0x1, 0x2, 0x0, 0x8, 0x9
KB, MB = 1024, 1024 * 1024

#: Shortened for the tests: a socket is pinged after 2 s of silence and has 1 s to answer (and to take
#: its unread replies).
LIMITS = {
    "retained_window": 32,
    "max_frames_per_message": 16,  # a message of at most 7,744 bytes
    "ws_ping_interval_s": 2,
    "ws_ping_timeout_s": 1,
    "board_max_subscribers": 3,
}


@pytest.fixture(scope="module")
def edge(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("limits") / "server.log", **LIMITS) as srv:
        yield srv


@pytest.fixture(scope="module")
def planed(plane: str, edge: ServerProcess, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The limits server on each WebSocket data plane."""
    if plane == "native":
        yield edge
        return
    log = tmp_path_factory.mktemp("limits-asgi") / "server.log"
    with ServerProcess(tiny_model, log, ws_plane=plane, **LIMITS) as srv:
        yield srv


# --- a raw WebSocket client ---------------------------------------------------------------------


def frame(opcode: int, payload: bytes = b"", fin: bool = True) -> bytes:
    """A client frame (masked, with the all-zero key: the payload goes as it is)."""
    n = len(payload)
    first = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return first + length + b"\0\0\0\0" + payload


class RawSocket:
    """A stream socket opened by hand: whatever is written goes as it is; nothing is answered."""

    def __init__(self, port: int, stream_id: str, rcvbuf: int | None = None, timeout: float = 10.0):
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connect, so the window stays small
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16))
        self.sock.sendall(
            b"GET /v1/streams/%s/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (stream_id.encode(), key)
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            assert data, "closed during the handshake"
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))  # one write

    def _read(self, n: int) -> bytes | None:
        while len(self.buffer) < n:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def next_frame(self) -> tuple[int, bytes] | None:
        """The server's next frame (opcode, payload); None once the connection is closed."""
        head = self._read(2)
        if head is None:
            return None
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        payload = self._read(n)
        return None if payload is None else (head[0] & 0x0F, payload)

    def messages_until_close(self) -> tuple[list[tuple[int, bytes]], bytes | None]:
        """Every frame up to the server's close frame, and that frame's payload (None: no close frame)."""
        frames = []
        while (got := self.next_frame()) is not None:
            if got[0] == CLOSE:
                return frames, got[1]
            if got[0] != PING:  # the server's keepalive, left unanswered
                frames.append(got)
        return frames, None

    def closed_within(self, seconds: float) -> bool:
        """Whether the server ends the connection (FIN or reset) within ``seconds``, reading what comes."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                if not self.sock.recv(1 << 20):
                    return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False
        return False

    def close(self) -> None:
        self.sock.close()


def close_code(payload: bytes | None) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if payload and len(payload) >= 2 else None


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# --- 1. request headers ---------------------------------------------------------------------------

HEAD_FLOODS = {
    "200,000 empty header lines": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"a:\r\n" * 200_000 + b"\r\n",
    "101 short headers": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
    + b"".join(b"x-%d: 1\r\n" % i for i in range(101))
    + b"\r\n",
    "one header line of 100 KB": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nx-big: " + b"v" * 100 * KB + b"\r\n\r\n",
    "a header line that never ends": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nx-big: " + b"v" * 400 * KB,
    "a request line of 40 KB": b"GET /healthz?" + b"q" * 40 * KB + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "40 headers of 1 KB": b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
    + b"".join(b"x-%d: %s\r\n" % (i, b"v" * KB) for i in range(40))
    + b"\r\n",
}


@pytest.mark.parametrize("case", list(HEAD_FLOODS))
def test_request_headers_past_the_limits_get_431_in_the_error_shape_and_a_close(edge, case):
    pid = edge.proc.pid
    peak = memory_kb(pid, "VmHWM")
    answer, _ = raw_exchange(edge.port, HEAD_FLOODS[case], ())
    status, body = status_and_body(answer)
    assert status == 431, answer[:300]
    assert body["error"]["code"] == "headers_too_large" and body["error"]["message"]
    assert b"connection: close" in answer.lower()
    assert memory_kb(pid, "VmHWM") - peak < 8_000  # the head was never stored past its limits
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_a_request_with_forty_headers_is_served(edge):
    headers = {f"x-h{i}": "v" * 100 for i in range(40)}
    assert httpx.get(f"{edge.url}/healthz", headers=headers).status_code == 200
    head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(90)) + b"\r\n"
    assert status_and_body(raw_exchange(edge.port, head, ())[0])[0] == 200
    assert metric(edge, 'progress_errors_total{code="headers_too_large"}') >= 1  # counted like every error


# --- 2. replies a client leaves unread; what an error reply echoes ---------------------------------


def test_a_socket_whose_replies_stay_unread_stops_being_read_and_is_closed(planed):
    """Each ``{"seq":0}`` (15 bytes on the wire) draws an error reply of ~100 bytes; the client never reads."""
    ws = RawSocket(planed.port, "unread", rcvbuf=4096)
    ws.sock.setblocking(False)
    data = memoryview(frame(TEXT, b'{"seq":0}') * 4096)
    sent, stalled_since, reset = 0, None, False
    while sent < 4 * MB:
        try:
            n = ws.sock.send(data[sent % len(data) :])
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2:
                break
            time.sleep(0.01)
            continue
        except (BrokenPipeError, ConnectionResetError):
            reset = True  # closed while we were still sending
            break
        sent, stalled_since = sent + n, None
    assert sent < 4 * MB, "the server kept reading a client that reads none of its replies"
    assert reset or ws.closed_within(15)
    ws.close()


def test_an_error_reply_carries_only_an_excerpt_of_what_was_sent(planed):
    key = "k" * 5000
    message = orjson.dumps({"seq": 0, "embeddings": [[0.1] * 16], key: 1})
    with connect(f"{planed.ws_url}/v1/streams/echo/ws") as ws:
        ws.send(message.decode())
        reply = ws.recv()
    error = orjson.loads(reply)["error"]
    assert error["code"] == "invalid_input" and error["field"].startswith("kkkk")
    assert len(reply) < 400, reply
    res = httpx.post(
        f"{planed.url}/v1/streams", content=orjson.dumps({key: 1}), headers={"content-type": "application/json"}
    )
    assert res.status_code == 422 and len(res.content) < 400
    httpx.delete(f"{planed.url}/v1/streams/echo")


# --- 3. fragments -----------------------------------------------------------------------------------


def test_empty_continuation_frames_are_bounded(planed):
    ws = RawSocket(planed.port, "fragments")
    ws.send(frame(TEXT, b'{"seq": 0, ', fin=False), *[frame(CONTINUATION, fin=False)] * 100_000)
    frames, close = ws.messages_until_close()
    assert close_code(close) in (1008, 1009) and not frames
    ws.close()
    httpx.delete(f"{planed.url}/v1/streams/fragments")


# --- 4. pings, open files, connections ------------------------------------------------------------


def test_a_peer_that_never_answers_pings_is_closed(planed):
    ws = RawSocket(planed.port, "silent")
    started = time.monotonic()
    pinged = False
    ws.sock.settimeout(15)
    while (got := ws.next_frame()) is not None and got[0] != CLOSE:
        pinged = pinged or got[0] == PING  # never answered
    assert pinged and time.monotonic() - started < 12  # 2 s of silence, 1 s to answer, and slack
    ws.close()
    httpx.delete(f"{planed.url}/v1/streams/silent")


def test_the_open_file_limit_is_raised_and_logged(tiny_model, tmp_path):
    serve = [sys.executable, "-m", "progress_stream.cli", "serve", "--model", str(tiny_model)]
    command = ["sh", "-c", 'ulimit -Sn 256 && exec "$@"', "sh", *serve]
    with ServerProcess(tiny_model, tmp_path / "log", command=command) as srv:
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()
        assert soft == hard, limits
        log = srv.log.read_text()
        line = next(line for line in log.splitlines() if "open files" in line)
        found = re.search(r"open files: (\d+) \(soft limit, raised from 256\); serving at most (\d+) connections", line)
        assert found and found.group(1) == hard, line
        assert 0 < int(found.group(2)) <= int(hard) - 128  # room left for the files and the store


def test_connections_past_the_cap_are_refused_with_503(tiny_model, tmp_path):
    with ServerProcess(tiny_model, tmp_path / "log", max_connections=12, header_timeout_s=60) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(12)]
        time.sleep(0.5)
        res = httpx.get(f"{srv.url}/healthz")
        assert res.status_code == 503 and res.json()["error"]["code"] == "too_many_connections"
        assert int(res.headers["retry-after"]) >= 1
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{srv.ws_url}/v1/streams/capped/ws", open_timeout=10)
        assert refused.value.response.status_code == 503
        assert orjson.loads(refused.value.response.body)["error"]["code"] == "too_many_connections"
        for sock in idle:
            sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/healthz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert metric(srv, 'progress_errors_total{code="too_many_connections"}') >= 2


# --- 5. board subscribers ------------------------------------------------------------------------------


class Subscriber(threading.Thread):
    """One board client: reads events until told to stop; keeps the status and the events' names."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.status, self.events, self.stop = url, None, [], threading.Event()
        self.opened = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError), httpx.stream("GET", self.url, timeout=30) as res:
            self.status = res.status_code
            self.opened.set()
            for line in res.iter_lines():
                if line.startswith("event: "):
                    self.events.append(line[7:])
                if self.stop.is_set():
                    return
        self.opened.set()


def subscribe(server: ServerProcess, n: int) -> list[Subscriber]:
    subs = [Subscriber(f"{server.url}/v1/board/events") for _ in range(n)]
    for sub in subs:
        sub.start()
        assert sub.opened.wait(10)
    return subs


def no_subscribers(server: ServerProcess) -> None:
    """Wait for the board's subscribers to leave (each at its next event, at most a period later)."""
    deadline = time.monotonic() + 10
    while metric(server, "progress_board_subscribers") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_board_subscribers_past_the_cap_are_refused_with_503(edge):
    no_subscribers(edge)
    subs = subscribe(edge, 3)
    assert [s.status for s in subs] == [200, 200, 200]
    with httpx.stream("GET", f"{edge.url}/v1/board/events", timeout=10) as res:
        assert res.status_code == 503 and orjson.loads(res.read())["error"]["code"] == "too_many_subscribers"
        assert "retry-after" in res.headers
    for sub in subs:
        sub.stop.set()
    no_subscribers(edge)
    with httpx.stream("GET", f"{edge.url}/v1/board/events", timeout=10) as res:
        assert res.status_code == 200


def test_board_subscribers_share_one_computation_per_tick(edge):
    def ticks_per_second(n: int) -> float:
        no_subscribers(edge)
        subs = subscribe(edge, n)
        while any(len(s.events) < 2 for s in subs):  # every one has its snapshot and an update
            time.sleep(0.05)
        before, started = metric(edge, "progress_board_ticks_total"), time.monotonic()
        time.sleep(2)
        rate = (metric(edge, "progress_board_ticks_total") - before) / (time.monotonic() - started)
        assert all(s.events[0] == "snapshot" and set(s.events[1:]) == {"update"} for s in subs)
        for sub in subs:
            sub.stop.set()
        return rate

    one, three = ticks_per_second(1), ticks_per_second(3)
    assert 0 < three < 2 * one  # one Watcher per tick, not one per subscriber (which would be 3x)


# --- 9c, 9d. after a close ------------------------------------------------------------------------------


def test_nothing_buffered_after_broken_framing_is_processed(planed):
    message = orjson.dumps({"seq": 0, "embeddings": [[0.1] * 16]})
    ws = RawSocket(planed.port, "after-close")
    ws.send(
        frame(TEXT, message[:20], fin=False),
        frame(BINARY, b"\0" * 16),  # a new message inside a fragmented one: 1002
        frame(CONTINUATION, message[20:]),
    )
    frames, close = ws.messages_until_close()
    assert close_code(close) == 1002 and not frames
    ws.close()
    assert httpx.get(f"{planed.url}/v1/streams/after-close").json()["next_seq"] == 0
    httpx.delete(f"{planed.url}/v1/streams/after-close")


def test_a_close_without_a_code_is_answered_without_one_or_with_1000(planed):
    ws = RawSocket(planed.port, "no-code")
    ws.send(frame(CLOSE))
    _, close = ws.messages_until_close()
    assert close is not None and (close == b"" or close_code(close) == 1000), close
    ws.close()
    httpx.delete(f"{planed.url}/v1/streams/no-code")
