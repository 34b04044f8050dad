"""Many interleaved streams over real HTTP and WebSocket clients equal offline stepping."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect

from progress_stream.client import AsyncStreamSession, StreamSession, WsStreamSession
from progress_stream.contract.binary import binary_request, parse_binary_reply
from tests.conftest import frames, offline

TOL = 1e-5


def test_many_streams_interleaved_over_every_transport(ws_server, runtime):
    server = ws_server
    rng = np.random.default_rng(0)
    streams = {
        f"s{i}": (frames(rng, int(rng.integers(5, 60))), ["ws-bin", "ws-json", "http"][i % 3]) for i in range(24)
    }

    async def run_one(name: str, x: np.ndarray, transport: str) -> np.ndarray:
        if transport == "http":
            session = await AsyncStreamSession.open(server.url, stream_id=name)
        else:
            session = await WsStreamSession.open(server.ws_url, stream_id=name, binary=transport == "ws-bin")
        out, i = [], 0
        while i < len(x):
            n = int(rng.integers(1, 9))
            out.append(await session.send(x[i : i + n]))
            i += n
            await asyncio.sleep(0)
        await session.aclose()
        return np.concatenate(out)

    async def main():
        return await asyncio.gather(*(run_one(k, x, t) for k, (x, t) in streams.items()))

    results = asyncio.run(main())
    for (x, _), got in zip(streams.values(), results, strict=True):
        np.testing.assert_allclose(got, offline(runtime, x), atol=TOL)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "progress_batch_size_bucket" in metrics


def test_reset_starts_a_new_action(server, runtime):
    rng = np.random.default_rng(1)
    x = frames(rng, 20)
    with StreamSession(server.url) as s:
        a = s.send(x[:7])
        b = s.send(x[7:12], reset=True)
        c = s.send(x[12:])
    np.testing.assert_allclose(np.concatenate([a, b, c]), offline(runtime, x, resets=(7,)), atol=TOL)
    np.testing.assert_allclose(b, runtime.run_action(x[7:12])[0], atol=TOL)


def test_retry_is_idempotent_and_conflicts_say_where_to_resume(server, runtime):
    rng = np.random.default_rng(2)
    x = frames(rng, 60)
    h = httpx.Client(base_url=server.url)
    sid = h.post("/v1/streams", json={}).json()["stream_id"]

    def post(seq, a, b, **kw):
        return h.post(f"/v1/streams/{sid}/frames", json={"seq": seq, "embeddings": x[a:b].tolist(), **kw})

    first = post(0, 0, 4).json()
    again = post(0, 0, 4).json()
    assert first == again and first["next_seq"] == 4
    assert h.get(f"/v1/streams/{sid}").json()["next_seq"] == 4
    ahead = post(9, 9, 12)
    assert ahead.status_code == 409 and ahead.json()["error"]["expected_seq"] == 4
    for seq in range(4, 60, 8):
        assert post(seq, seq, seq + 8).status_code == 200
    too_old = post(0, 0, 4)  # window is 32 frames
    assert too_old.status_code == 409 and too_old.json()["error"]["expected_seq"] == 60
    replay = post(52, 52, 60).json()
    np.testing.assert_allclose(replay["progress"], offline(runtime, x)[52:60], atol=TOL)
    assert h.get(f"/v1/streams/{sid}").json()["processed_seq"] == 60


def test_binary_messages_and_reconnect_continue_the_stream(ws_server, runtime):
    server = ws_server
    rng = np.random.default_rng(3)
    x = frames(rng, 26)

    async def main():
        url = f"{server.ws_url}/v1/streams/bin-1/ws"
        async with connect(url, compression=None) as ws:
            await ws.send(binary_request(0, x[:10]))
            seq, next_seq, p1 = parse_binary_reply(await ws.recv())
            assert (seq, next_seq) == (0, 10)
        async with connect(url, compression=None) as ws:  # a new connection continues the same stream
            await ws.send(orjson.dumps({"seq": 10, "embeddings": x[10:].tolist()}).decode())
            reply = orjson.loads(await ws.recv())
        return np.concatenate([p1, reply["progress"]])

    np.testing.assert_allclose(asyncio.run(main()), offline(runtime, x), atol=TOL)


def test_stream_lifecycle_model_and_stateless(server, runtime):
    rng = np.random.default_rng(4)
    h = httpx.Client(base_url=server.url)
    created = h.post("/v1/streams", json={"stream_id": "life-1"})
    assert created.status_code == 201 and created.json()["next_seq"] == 0
    assert created.json()["model"]["embedding_dim"] == 16
    h.post("/v1/streams/life-1/frames", json={"seq": 0, "embeddings": frames(rng, 3).tolist()})
    again = h.post("/v1/streams", json={"stream_id": "life-1"})
    assert again.status_code == 200 and again.json()["next_seq"] == 3
    assert len(h.post("/v1/streams").json()["stream_id"]) == 32  # random 128-bit id
    assert h.get("/v1/streams/life-1").json()["step"] == 3
    assert h.delete("/v1/streams/life-1").status_code == 204
    assert h.get("/v1/streams/life-1").status_code == 404
    model = h.get("/v1/model").json()
    assert model["providers"] == ["CPUExecutionProvider"] and model["hidden_dim"] == str(runtime.hidden_dim)
    x = frames(rng, 40)
    stateless = h.post("/v1/progress", json={"embeddings": x.tolist()}).json()["progress"]
    np.testing.assert_allclose(stateless, runtime.run_action(x)[0], atol=TOL)
    paths = h.get("/openapi.json").json()["paths"]
    assert {"/v1/streams", "/v1/streams/{stream_id}/frames", "/v1/progress", "/v1/model"} <= set(paths)


@pytest.mark.parametrize("binary", [True, False])
def test_sync_websocket_session(ws_server, runtime, binary):
    server = ws_server
    from progress_stream.client import SyncWsStreamSession

    x = frames(np.random.default_rng(5), 12)
    with SyncWsStreamSession(server.ws_url, binary=binary) as s:
        got = np.concatenate([s.send(x[:5]), s.send(x[5:])])
    np.testing.assert_allclose(got, offline(runtime, x), atol=TOL)
