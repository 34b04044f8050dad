"""The edge guards, against a real server: what can be refused without the body never reads it.

Each test names the defect of issue 10 it reproduces (D1, D2, D3, D9, D10, D11, gzip).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from progress_stream.server.process import ServerProcess

JSON = {"content-type": "application/json"}
MB = 1024 * 1024


def memory_kb(pid: int, field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def answered(answer: bytes) -> bool:
    """The answer's head and its whole body (Content-Length) are in (the two may come in separate segments)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = next(
        (line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")), b"0"
    )
    return len(body) >= int(length)


def raw_exchange(port: int, head: bytes, body_chunks, timeout: float = 10.0) -> tuple[bytes, int]:
    """Send ``head`` then body chunks until the server answers or closes; returns (answer, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setblocking(False)
    sent, answer = 0, b""
    deadline = time.monotonic() + timeout
    pending = head
    chunks = iter(body_chunks)
    try:
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                if answered(answer):
                    break
            except BlockingIOError:
                pass
            if not pending:
                pending = next(chunks, b"")
                if not pending:
                    time.sleep(0.01)
                    continue
            try:
                n = sock.send(pending)
                sent += n
                pending = pending[n:]
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        if b"\r\n\r\n" not in answer:  # the server may have answered and closed while we were sending
            sock.settimeout(2)
            with contextlib.suppress(OSError):
                answer += sock.recv(65536)
    finally:
        sock.close()
    return answer, sent


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), orjson.loads(body) if body else {}


@pytest.fixture(scope="module")
def keyed(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("edge") / "server.log"
    with ServerProcess(tiny_model, log, api_key="s3cret", body_timeout_s=1, header_timeout_s=1) as srv:
        yield srv


AUTH = {"Authorization": "Bearer s3cret"}


def streams_now(server: ServerProcess, headers: dict) -> dict:
    """Every stream's counters and last progress (not its idle time, which moves on its own)."""
    page = httpx.get(f"{server.url}/v1/streams", params={"limit": 1000}, headers=headers).json()
    return {r["stream_id"]: {k: v for k, v in r.items() if k != "idle_s"} for r in page["streams"]}


@pytest.fixture
def unchanged(keyed):
    """A refusal must leave every stream as it was: a bystander with frames, and the target of D2."""
    if httpx.get(f"{keyed.url}/v1/streams/bystander", headers=AUTH).status_code == 404:
        httpx.put(f"{keyed.url}/v1/streams/bystander", headers=AUTH)
        body = {"seq": 0, "embeddings": [[0.25] * 16] * 3}
        assert httpx.post(f"{keyed.url}/v1/streams/bystander/frames", json=body, headers=AUTH).status_code == 200
        httpx.put(f"{keyed.url}/v1/streams/chunky", headers=AUTH)
    before = streams_now(keyed, AUTH)
    yield
    assert streams_now(keyed, AUTH) == before


def test_d1_a_huge_body_without_the_key_is_refused_unread(keyed, unchanged):
    pid = keyed.proc.pid
    before = memory_kb(pid, "VmRSS")
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    answer, sent = raw_exchange(keyed.port, head, (b"x" * MB for _ in range(300)))
    status, body = status_and_body(answer)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert sent < 100 * MB  # refused long before the body could have been read
    assert memory_kb(pid, "VmRSS") - before < 30_000


def test_a_refused_upload_is_read_and_dropped_after_its_answer_not_reset(keyed, unchanged):
    """After refusing a body it did not read, the server half-closes and goes on reading (dropping) what the
    client still sends: a close at once would answer those bytes with a reset, which can destroy the
    answer before the client reads it."""
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: localhost\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=5) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):  # the answer, then the server's FIN
            answer += chunk
        for _ in range(4):  # the body goes on: read and dropped, so no reset comes back
            sock.sendall(b"x" * (256 * 1024))
            time.sleep(0.05)
    status, body = status_and_body(answer)
    assert status == 401 and body["error"]["code"] == "unauthorized"


def test_d1_a_declared_oversized_body_is_refused_before_reading(keyed, unchanged):
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n"
    )
    status, body = status_and_body(raw_exchange(keyed.port, head, ())[0])
    assert status == 413 and body["error"]["code"] == "too_large"


def test_d2_a_chunked_body_is_counted_while_it_is_read(keyed, unchanged):
    pid = keyed.proc.pid
    peak = memory_kb(pid, "VmHWM")
    stream = httpx.put(f"{keyed.url}/v1/streams/chunky", headers={"Authorization": "Bearer s3cret"})
    assert stream.status_code in (200, 201)
    head = (
        b"POST /v1/streams/chunky/frames HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (MB, b" " * MB)
    answer, sent = raw_exchange(keyed.port, head, (chunk for _ in range(500)))
    status, body = status_and_body(answer)
    assert status == 413 and body["error"] == {
        "code": "too_large",
        "message": body["error"]["message"],
        "field": "body",
    }
    assert sent < 100 * MB
    assert memory_kb(pid, "VmHWM") - peak < 40_000  # never more than the route's limit (plus slack) held


def test_d11_slow_headers_are_closed_and_a_slow_body_gets_408(keyed, unchanged):
    socks = [socket.create_connection(("127.0.0.1", keyed.port)) for _ in range(50)]
    for s in socks:
        s.sendall(b"GET /heal")
        s.settimeout(5)
    started = time.monotonic()
    assert all(s.recv(100) == b"" for s in socks)  # each closed by the server (header deadline 1 s)
    assert time.monotonic() - started < 4
    for s in socks:
        s.close()
    head = (
        b"POST /v1/streams HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer s3cret\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    status, body = status_and_body(raw_exchange(keyed.port, head, ())[0])
    assert status == 408 and body["error"]["code"] == "request_timeout"


def test_d11_an_unfinished_body_does_not_hold_sigterm(tiny_model, tmp_path):
    srv = ServerProcess(tiny_model, tmp_path / "log", body_timeout_s=2).start()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sock.sendall(
        b"POST /v1/streams HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
    )
    time.sleep(0.3)
    started = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=15) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 6
    sock.close()


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"content-type": "text/plain"}, "unsupported_media_type"),
        ({}, "unsupported_media_type"),
        ({"content-type": "application/json", "content-encoding": "gzip"}, "unsupported_media_type"),
    ],
)
def test_a_body_that_is_not_plain_json_gets_415(keyed, unchanged, headers, code):
    auth = {"Authorization": "Bearer s3cret"}
    body = orjson.dumps({"seq": 0, "embeddings": [[0.0] * 16]})
    res = httpx.post(f"{keyed.url}/v1/streams", content=body, headers={**auth, **headers})
    assert res.status_code == 415 and res.json()["error"]["code"] == code


def test_d3_cross_site_requests_and_sockets_are_refused(ws_server):
    server = ws_server
    port = server.port
    evil = {"Origin": "http://evil.example"}
    res = httpx.put(f"{server.url}/v1/streams/victim", headers=evil)
    assert res.status_code == 403 and res.json()["error"]["code"] == "forbidden_origin"
    assert httpx.get(f"{server.url}/v1/streams/victim").status_code == 404  # nothing was created
    # a simple cross-site form post (text/plain needs no CORS preflight): refused as well
    res = httpx.post(
        f"{server.url}/v1/streams", content=b'{"stream_id": "victim"}', headers={"content-type": "text/plain"}
    )
    assert res.status_code == 415

    async def open_ws(origin: str) -> str:
        async with connect(f"{server.ws_url}/v1/streams/victim/ws", origin=origin) as conn:
            await conn.send(orjson.dumps({"seq": 0, "embeddings": [[0.1] * 16]}).decode())
            return orjson.loads(await conn.recv())

    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(open_ws("http://evil.example"))
    assert refused.value.response.status_code == 403
    assert orjson.loads(refused.value.response.body)["error"]["code"] == "forbidden_origin"
    # the server's own origin (a page it served) and clients that send no Origin are unaffected
    assert "progress" in asyncio.run(open_ws(f"http://127.0.0.1:{port}"))
    assert (
        httpx.get(f"{server.url}/v1/streams/victim", headers={"Origin": f"http://127.0.0.1:{port}"}).status_code == 200
    )
    httpx.delete(f"{server.url}/v1/streams/victim")


def test_d3_allowed_origins_opens_the_api_to_a_named_site(tiny_model, tmp_path):
    with ServerProcess(tiny_model, tmp_path / "log", allowed_origins="https://lab.example, http://b.example") as srv:
        assert httpx.put(f"{srv.url}/v1/streams/s", headers={"Origin": "https://lab.example"}).status_code == 201
        assert httpx.get(f"{srv.url}/v1/streams/s", headers={"Origin": "http://evil.example"}).status_code == 403


@pytest.mark.parametrize("body", [b"\xff\xfe\x00garbage", b'{"stream_id": "abc', b"[1, 2]", b'"x"'])
def test_d9_malformed_bodies_answer_422_in_the_error_shape(server, body):
    before = streams_now(server, {})
    res = httpx.post(f"{server.url}/v1/streams", content=body, headers=JSON)
    assert res.status_code == 422
    assert res.json()["error"]["code"] == "invalid_input" and res.json()["error"]["field"] == "body"
    assert streams_now(server, {}) == before  # no stream was created
