"""Memory and files a single connection can take, against a real server (issue 19, items 1-5, 9c, 9d).

Raw sockets where a well-behaved client library would never send what is tested: header floods,
empty continuation frames, unanswered pings, replies left unread.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from progress_stream.server.process import ServerProcess
from tests.server.test_edge import memory_kb, raw_exchange, status_and_body

KB, MB = 1024, 1024 * 1024

LIMITS = {
    "retained_window": 32,
    "max_frames_per_message": 16,  # a message of at most 7,744 bytes
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


def metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# --- 1. request headers ---------------------------------------------------------------------------

HEAD_FLOODS = {
    "200,000 empty header lines": b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"a:\r\n" * 200_000 + b"\r\n",
    "101 short headers": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"x-%d: 1\r\n" % i for i in range(101))
    + b"\r\n",
    "one header line of 100 KB": b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: " + b"v" * 100 * KB + b"\r\n\r\n",
    "a header line that never ends": b"GET /healthz HTTP/1.1\r\nHost: x\r\nx-big: " + b"v" * 400 * KB,
    "a request line of 40 KB": b"GET /healthz?" + b"q" * 40 * KB + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "40 headers of 1 KB": b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
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
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(90)) + b"\r\n"
    assert status_and_body(raw_exchange(edge.port, head, ())[0])[0] == 200
    assert metric(edge, 'progress_errors_total{code="headers_too_large"}') >= 1  # counted like every error


# --- 2. what an error reply echoes ---------------------------------------------------------------


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
