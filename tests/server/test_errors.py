"""Every bad input gets a clear error naming the field, and never disturbs another stream."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from progress_stream.contract.binary import REQUEST_HEADER, binary_request
from tests.conftest import frames, offline


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url) as client:
        yield client


JSON = {"content-type": "application/json"}


def error(response: httpx.Response) -> dict:
    return response.json()["error"]


@pytest.mark.parametrize(
    ("body", "status", "field", "code"),
    [
        ({"seq": 0, "embeddings": [[0.1] * 15]}, 422, "embeddings[0]", "wrong_dimension"),
        ({"seq": 0, "embeddings": [[1e39] + [0.0] * 15]}, 422, "embeddings[0][0]", "invalid_input"),
        ({"seq": 0, "embeddings": [[0.0] * 16, [0.0] * 15 + [-2e6]]}, 422, "embeddings[1][15]", "invalid_input"),
        ({"seq": 0, "embeddings": []}, 422, "embeddings", "empty"),
        ({"seq": 0, "embeddings": [[0.0] * 16] * 17}, 422, "embeddings", "too_many_frames"),
        ({"seq": -1, "embeddings": [[0.0] * 16]}, 422, "seq", "invalid_input"),
        ({"seq": 0, "embeddings": [["a"] * 16]}, 422, "embeddings[0][0]", "invalid_input"),
        # D10: numbers must be JSON numbers, integers integers, flags booleans
        ({"seq": 0, "embeddings": [[0.0] * 15 + ["0.05"]]}, 422, "embeddings[0][15]", "invalid_input"),
        ({"seq": 0, "embeddings": [[" 1 "] + [0.0] * 15]}, 422, "embeddings[0][0]", "invalid_input"),
        ({"seq": 0, "embeddings": [[0.0] * 16, ["1_0"] + [0.0] * 15]}, 422, "embeddings[1][0]", "invalid_input"),
        ({"seq": 0, "embeddings": [[True] + [0.0] * 15]}, 422, "embeddings[0][0]", "invalid_input"),
        ({"seq": "0", "embeddings": [[0.0] * 16]}, 422, "seq", "invalid_input"),
        ({"seq": 0.5, "embeddings": [[0.0] * 16]}, 422, "seq", "invalid_input"),
        ({"seq": True, "embeddings": [[0.0] * 16]}, 422, "seq", "invalid_input"),
        ({"seq": 2**70, "embeddings": [[0.0] * 16]}, 422, "seq", "invalid_input"),
        ({"seq": 0}, 422, "embeddings", "invalid_input"),
        ({"seq": 0, "embeddings": [[0.0] * 16], "extra": 1}, 422, "extra", "invalid_input"),
        ({"seq": 0, "embeddings": [[0.0] * 16], "reset": "yes"}, 422, "reset", "invalid_input"),
        ([1, 2], 422, "body", "invalid_input"),
    ],
)
def test_bad_frames_bodies(http, body, status, field, code):
    sid = http.post("/v1/streams", json={}).json()["stream_id"]
    r = http.post(f"/v1/streams/{sid}/frames", json=body)
    assert r.status_code == status, r.text
    assert error(r)["field"] == field and error(r)["code"] == code
    assert http.get(f"/v1/streams/{sid}").json()["next_seq"] == 0  # nothing was accepted


def test_malformed_json_unknown_stream_and_bad_ids(http):
    sid = http.post("/v1/streams", json={}).json()["stream_id"]
    r = http.post(f"/v1/streams/{sid}/frames", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error(r)["field"] == "body" and "malformed JSON" in error(r)["message"]
    r = http.post("/v1/streams/nope/frames", json={"seq": 0, "embeddings": [[0.0] * 16]})
    assert r.status_code == 404 and error(r)["code"] == "stream_not_found"
    r = http.post("/v1/streams", json={"stream_id": "bad id!"})
    assert r.status_code == 422 and error(r)["field"] == "stream_id"
    r = http.post(f"/v1/streams/{sid}/frames", content=b"x" * (4 * 1024 * 1024 + 1), headers=JSON)
    assert r.status_code == 413 and error(r)["code"] == "too_large"


def test_bad_input_never_disturbs_another_stream(server, http, runtime):
    rng = np.random.default_rng(7)
    x = frames(rng, 24)
    good = http.post("/v1/streams", json={}).json()["stream_id"]
    bad = http.post("/v1/streams", json={}).json()["stream_id"]
    out = []
    for i in range(0, 24, 8):
        http.post(f"/v1/streams/{bad}/frames", json={"seq": 0, "embeddings": [[1e39] * 16]})
        http.post(f"/v1/streams/{bad}/frames", json={"seq": 0, "embeddings": [[0.0] * 3]})
        out += http.post(f"/v1/streams/{good}/frames", json={"seq": i, "embeddings": x[i : i + 8].tolist()}).json()[
            "progress"
        ]
    np.testing.assert_allclose(out, offline(runtime, x), atol=1e-5)


def test_websocket_bad_message_keeps_the_connection_and_violations_close_it(ws_server, runtime):
    server = ws_server
    x = frames(np.random.default_rng(8), 4)

    async def main():
        url = f"{server.ws_url}/v1/streams/ws-err/ws"
        async with connect(url, compression=None) as ws:
            await ws.send(orjson.dumps({"seq": 0, "embeddings": [[0.0] * 3]}).decode())
            err = orjson.loads(await ws.recv())
            assert err["seq"] == 0 and err["error"]["code"] == "wrong_dimension"
            bad = binary_request(0, x).replace(x[1].tobytes(), np.full(16, np.nan, np.float32).tobytes())
            await ws.send(bad)
            err = orjson.loads(await ws.recv())
            assert err["error"]["code"] == "not_finite" and err["error"]["field"] == "embeddings[1]"
            await ws.send(orjson.dumps({"seq": 3, "embeddings": x.tolist()}).decode())
            err = orjson.loads(await ws.recv())
            assert err["error"]["code"] == "seq_conflict" and err["error"]["expected_seq"] == 0
            await ws.send(orjson.dumps({"seq": 0, "embeddings": x.tolist()}).decode())  # still usable
            np.testing.assert_allclose(orjson.loads(await ws.recv())["progress"], runtime.run_action(x)[0], atol=1e-5)
            await ws.send("{oops")
            err = orjson.loads(await ws.recv())
            assert err["error"]["code"] == "protocol_violation"
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008
        async with connect(url, compression=None) as ws:
            await ws.send(REQUEST_HEADER.pack(0, 5, 0) + b"\0" * 12)  # header says 5 frames, body holds less
            await ws.recv()
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1008
        async with connect(url, compression=None, max_size=None) as ws:
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.send(b"\0" * (4 * 1024 * 1024 + 16))
                await ws.recv()
            assert closed.value.rcvd.code == 1009

    asyncio.run(main())
