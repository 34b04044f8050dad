"""Retries that are retries (D4), a full table (D8) and binary flags (D10), against a real server."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from progress_stream.client import ServerError, StreamSession, SyncWsStreamSession
from progress_stream.contract.binary import REQUEST_HEADER, binary_request
from progress_stream.server.process import ServerProcess
from tests.conftest import frames, offline


def post(url: str, sid: str, seq: int, x: np.ndarray, reset: bool = False) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{sid}/frames", json={"seq": seq, "embeddings": x.tolist(), "reset": reset})


def test_d4_a_retry_is_answered_only_if_it_is_the_same_chunk(server, runtime):
    rng = np.random.default_rng(21)
    x, other = frames(rng, 8), frames(rng, 8)
    httpx.put(f"{server.url}/v1/streams/retry")
    first = post(server.url, "retry", 0, x[:4]).json()["progress"]
    post(server.url, "retry", 4, x[4:])
    overlap = post(server.url, "retry", 2, other[:4])  # the README promises 409 for an overlapping chunk
    assert overlap.status_code == 409
    assert overlap.json()["error"]["expected_seq"] == 8 and "not the first frame" in overlap.json()["error"]["message"]
    cases = {
        "different embeddings": (0, other[:4], False),
        "reset False, not True": (0, x[:4], True),
        "4 frames, not 3": (0, x[:3], False),
    }
    for says, (seq, data, reset) in cases.items():
        res = post(server.url, "retry", seq, data, reset)
        assert res.status_code == 409 and res.json()["error"]["code"] == "seq_conflict", res.text
        assert says in res.json()["error"]["message"] and res.json()["error"]["expected_seq"] == 8
    same = post(server.url, "retry", 0, x[:4])
    assert same.status_code == 200 and same.json()["progress"] == first
    np.testing.assert_allclose(first, offline(runtime, x)[:4], atol=1e-5)
    assert httpx.get(f"{server.url}/v1/streams/retry").json()["next_seq"] == 8  # nothing was accepted twice


def test_d4_concurrent_senders_each_get_their_own_answer_or_409(server, runtime):
    rng = np.random.default_rng(22)
    data = [frames(rng, 4) for _ in range(8)]
    data[5] = data[0]  # one honest duplicate of client 0

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url) as client:
            await client.put("/v1/streams/race")
            return await asyncio.gather(
                *(client.post("/v1/streams/race/frames", json={"seq": 0, "embeddings": d.tolist()}) for d in data)
            )

    answers = asyncio.run(send_all())
    winners = [i for i, r in enumerate(answers) if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in answers)
    accepted = data[winners[0]]
    assert all(np.array_equal(data[i], accepted) for i in winners)  # only senders of the accepted data got 200
    for i in winners:
        np.testing.assert_allclose(answers[i].json()["progress"], offline(runtime, data[i]), atol=1e-5)
    assert len(winners) in (1, 2) and (len(winners) == 2) == (winners[0] in (0, 5))


def test_d4_a_websocket_retry_with_other_data_gets_seq_conflict(ws_server):
    server = ws_server
    x = frames(np.random.default_rng(23), 2)

    async def main() -> tuple[dict, dict]:
        async with connect(f"{server.ws_url}/v1/streams/ws-retry/ws") as conn:
            await conn.send(binary_request(0, x[:1]))
            await conn.recv()
            await conn.send(binary_request(0, x[1:]))
            conflict = orjson.loads(await conn.recv())
            await conn.send(binary_request(0, x[:1]))
            again = await conn.recv()
            return conflict, again

    conflict, again = asyncio.run(main())
    assert conflict["error"]["code"] == "seq_conflict" and conflict["error"]["expected_seq"] == 1
    assert isinstance(again, bytes)  # the true retry is answered from the window


def test_d10_unknown_binary_flag_bits_are_a_protocol_violation(ws_server):
    server = ws_server
    x = frames(np.random.default_rng(24), 1)
    message = bytearray(binary_request(0, x))
    REQUEST_HEADER.pack_into(message, 0, 0, 1, 0b110)

    async def main() -> tuple[dict, ConnectionClosedError]:
        async with connect(f"{server.ws_url}/v1/streams/flags/ws") as conn:
            await conn.send(bytes(message))
            error = orjson.loads(await conn.recv())
            with pytest.raises(ConnectionClosedError) as closed:
                await conn.recv()
            return error, closed.value

    error, closed = asyncio.run(main())
    assert error["error"]["code"] == "protocol_violation" and "flag" in error["error"]["message"]
    assert closed.rcvd.code == 1008
    assert httpx.get(f"{server.url}/v1/streams/flags").json()["next_seq"] == 0


def test_d8_a_full_table_refuses_a_new_websocket_with_503_and_retry_after(tiny_model, tmp_path, plane):
    with ServerProcess(tiny_model, tmp_path / "log", max_streams=2, ws_plane=plane) as srv:
        for sid in ("a", "b"):
            httpx.put(f"{srv.url}/v1/streams/{sid}")

        async def open_third() -> None:
            async with connect(f"{srv.ws_url}/v1/streams/c/ws"):
                pass

        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(open_third())
        response = refused.value.response
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert orjson.loads(response.body)["error"]["code"] == "too_many_streams"
        res = httpx.put(f"{srv.url}/v1/streams/c")
        assert res.status_code == 503 and res.headers["Retry-After"] == "5"
        assert res.json()["error"]["code"] == "too_many_streams"
        held = httpx.get(f"{srv.url}/v1/streams").json()
        assert [r["stream_id"] for r in held["streams"]] == ["a", "b"]  # the refusals took nothing


@pytest.mark.parametrize("transport", ["http", "ws-binary", "ws-json"])
def test_a_chunk_refused_for_its_values_takes_no_seq_and_the_session_goes_on(ws_server, runtime, transport):
    rng = np.random.default_rng(22)
    x = frames(rng, 5)
    bad = x[2:4].copy()
    bad[1, 3] = np.inf
    sid = f"refused-{transport}"
    if transport == "http":
        session = StreamSession(ws_server.url, stream_id=sid)
    else:
        session = SyncWsStreamSession(ws_server.ws_url, stream_id=sid, binary=transport == "ws-binary")
    with session:
        head = session.send(x[:2])
        with pytest.raises(ServerError) as refused:
            session.send(bad)
        assert refused.value.status == 422 and session.next_seq == 2
        tail = session.send(x[2:])
    np.testing.assert_allclose(np.concatenate([head, tail]), offline(runtime, x), atol=1e-5)
    assert httpx.get(f"{ws_server.url}/v1/streams/{sid}").json()["next_seq"] == 5


def test_an_http_session_opens_its_stream_again_after_a_restart_without_state(tiny_model, tmp_path, runtime):
    """As a WebSocket's handshake does: the stream is opened again and the session replays its history."""
    rng = np.random.default_rng(23)
    x = frames(rng, 6)
    with ServerProcess(tiny_model, tmp_path / "first.log") as first:
        session = StreamSession(first.url, stream_id="reopened")
        head = session.send(x[:3])
        first.kill()
        with ServerProcess(tiny_model, tmp_path / "second.log", port=first.port) as second:
            tail = session.send(x[3:])
            assert session.log.replayed == 3
            assert httpx.get(f"{second.url}/v1/streams/reopened").json()["next_seq"] == 6
        session.close()
    np.testing.assert_allclose(np.concatenate([head, tail]), offline(runtime, x), atol=1e-5)
