"""Stream ids: one validator on every route and the WebSocket, no echo of bad ids, no magic prefixes."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from progress_stream.client import StreamSession
from progress_stream.contract.wire import STREAM_ID_RULE
from progress_stream.server.process import ServerProcess
from tests.conftest import frames

# 5 kB: within the 8 kB a request line may take (a longer line is 431 before any route: test_connection_limits)
BAD_IDS = {"5 kB": "a" * 5_000, "65 chars": "b" * 65, "NUL": "a%00b", "unicode": "%C3%A9t%C3%A9", "dot": "a.b"}


@pytest.mark.parametrize("bad", list(BAD_IDS))
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [("GET", "", None), ("PUT", "", None), ("DELETE", "", None), ("POST", "/frames", {"seq": 0, "embeddings": []})],
)
def test_every_route_refuses_a_bad_id_the_same_way_without_echoing_it(server, bad, method, suffix, body):
    bystander = StreamSession(server.url, stream_id="bystander")
    if bystander.next_seq == 0:  # the first case gives it frames; the others find it as it was
        bystander.send(frames(np.random.default_rng(9), 2))
    before = httpx.get(f"{server.url}/v1/streams/bystander").json()
    res = httpx.request(method, f"{server.url}/v1/streams/{BAD_IDS[bad]}{suffix}", json=body)
    assert res.status_code == 422
    assert res.json() == {
        "error": {"code": "invalid_input", "message": f"stream_id must be {STREAM_ID_RULE}", "field": "stream_id"}
    }
    assert len(res.content) < 200
    after = httpx.get(f"{server.url}/v1/streams/bystander").json()
    assert {k: after[k] for k in ("next_seq", "processed_seq", "step")} == {
        k: before[k] for k in ("next_seq", "processed_seq", "step")
    }
    bystander.close()


def test_the_websocket_refuses_a_bad_id_with_the_same_message(ws_server):
    server = ws_server

    async def open_bad() -> None:
        async with connect(f"{server.ws_url}/v1/streams/{'a' * 65}/ws") as conn:
            await conn.recv()

    with pytest.raises(InvalidStatus) as refused:  # refused at the handshake, in the HTTP error shape
        asyncio.run(open_bad())
    assert refused.value.response.status_code == 422
    assert orjson.loads(refused.value.response.body) == {
        "error": {"code": "invalid_input", "message": f"stream_id must be {STREAM_ID_RULE}", "field": "stream_id"}
    }


def test_unknown_routes_and_methods_answer_in_the_error_shape(server):
    missing = httpx.get(f"{server.url}/v1/streams/a/b")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong = httpx.patch(f"{server.url}/v1/streams/ok-id")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert {"GET", "PUT", "DELETE"} <= {m.strip() for m in wrong.headers["allow"].split(",")}


def test_a_stateless_request_leaves_no_stream_behind(server):
    before = httpx.get(f"{server.url}/metrics").text
    x = frames(np.random.default_rng(3), 5)
    assert len(httpx.post(f"{server.url}/v1/progress", json={"embeddings": x.tolist()}).json()["progress"]) == 5
    active = [
        line
        for line in httpx.get(f"{server.url}/metrics").text.splitlines()
        if line.startswith("progress_streams_active ")
    ]
    assert active == [line for line in before.splitlines() if line.startswith("progress_streams_active ")]


def test_an_id_that_looks_like_the_old_stateless_prefix_is_an_ordinary_durable_stream(tiny_model, tmp_path):
    state = tmp_path / "streams.state"
    srv = ServerProcess(tiny_model, tmp_path / "log", state_file=state, snapshot_interval_s=60).start()
    try:
        with StreamSession(srv.url, stream_id="_stateless_mine") as s:
            s.send(frames(np.random.default_rng(4), 3))
        srv.terminate()
        srv.start()
        assert httpx.get(f"{srv.url}/v1/streams/_stateless_mine").json()["next_seq"] == 3
    finally:
        srv.kill()
