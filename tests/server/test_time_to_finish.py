"""Every answer carries the band, the frames left and (for a stream with a frame rate) the seconds left, on
every transport of a real server, exactly as the cell run offline and the cell contract give them; a
version 1 cell is served with null bands; the frame rate is checked wherever a stream is opened."""

from __future__ import annotations

import asyncio
import itertools

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from progress_stream.client import StreamSession, SyncGateway, SyncWsStreamSession
from progress_stream.contract.binary import (
    FLAG_REMAINING,
    FLAG_SECONDS,
    REPLY_HEADER,
    binary_request,
    parse_binary_reply,
)
from progress_stream.contract.gateway import decode_tick_reply, encode_entries
from progress_stream.contract.replies import Estimates
from progress_stream.server.process import ServerProcess
from tests.conftest import assert_same, frames, offline_answers

FPS = 29.97
RESETS = (13,)  # a new action within the stream: the frames into the action count from it again


def chunks(x: np.ndarray) -> list[tuple[int, int]]:
    """The stream in chunks of 1 to 7 frames, one of them starting at the reset."""
    bounds = sorted({0, *RESETS, *range(0, len(x), 7), len(x)})
    return list(itertools.pairwise(bounds))


def streamed(send, x: np.ndarray) -> Estimates:
    return Estimates.join([send(x[a:b], a in RESETS) for a, b in chunks(x)])


@pytest.mark.parametrize("fps", [FPS, None])
@pytest.mark.parametrize("transport", ["http", "ws-json", "ws-binary"])
def test_a_stream_answers_exactly_the_cell_offline_on_every_transport(ws_server, runtime, transport, fps):
    x = frames(np.random.default_rng(40), 30)
    sid = f"exact-{transport}-{fps is not None:d}-{ws_server.port}"
    if transport == "http":
        session = StreamSession(ws_server.url, stream_id=sid, fps=fps)
    else:
        session = SyncWsStreamSession(ws_server.ws_url, stream_id=sid, fps=fps, binary=transport == "ws-binary")
    with session:
        got = streamed(lambda part, reset: session.send(part, reset=reset), x)
    assert_same(got, offline_answers(runtime, x, RESETS, fps))
    assert httpx.get(f"{ws_server.url}/v1/streams/{sid}").json()["fps"] == fps


@pytest.mark.parametrize("binary", [True, False])
def test_a_gateway_answers_exactly_the_cell_offline(server, runtime, binary):
    x = frames(np.random.default_rng(41), 30)
    timed, plain = f"gw-exact-{binary:d}", f"gw-plain-{binary:d}"
    with SyncGateway(server.ws_url, binary=binary) as gw:
        gw.attach(timed, fps=FPS)
        gw.attach(plain)
        got = {
            sid: streamed(lambda part, reset, sid=sid: gw.tick({sid: part}, resets={sid} if reset else ())[sid], x)
            for sid in (timed, plain)  # one stream per tick: alone in its batches, as offline
        }
        both = gw.tick({timed: x[:1], plain: x[:1]})  # one tick, a stream with seconds and one without
    assert_same(got[timed], offline_answers(runtime, x, RESETS, FPS))
    assert_same(got[plain], offline_answers(runtime, x, RESETS))
    assert both[timed].remaining_s is not None and both[plain].remaining_s is None


def test_post_frames_and_the_stateless_route_answer_exactly_the_cell_offline(server, runtime):
    x = frames(np.random.default_rng(42), 20)
    assert httpx.put(f"{server.url}/v1/streams/http-tick", params={"fps": FPS}).json()["fps"] == FPS
    got = []
    for a, b in chunks(x):
        entry = {"stream_id": "http-tick", "seq": a, "embeddings": x[a:b].tolist(), "reset": a in RESETS}
        (result,) = httpx.post(f"{server.url}/v1/frames", json={"frames": [entry]}).json()["results"]
        got.append(Estimates.read(result))
    assert_same(Estimates.join(got), offline_answers(runtime, x, RESETS, FPS))
    stateless = httpx.post(f"{server.url}/v1/progress", json={"embeddings": x.tolist()}).json()
    assert stateless["remaining_s"] is None
    assert_same(Estimates.read(stateless), offline_answers(runtime, x))


def test_a_retry_is_answered_in_full_from_the_retained_window(server, runtime):
    x = frames(np.random.default_rng(43), 12)
    httpx.post(f"{server.url}/v1/streams", json={"stream_id": "retry-ttf", "fps": 25})
    body = {"seq": 0, "embeddings": x[:5].tolist()}
    first = httpx.post(f"{server.url}/v1/streams/retry-ttf/frames", json=body).json()
    httpx.post(
        f"{server.url}/v1/streams/retry-ttf/frames", json={"seq": 5, "embeddings": x[5:].tolist(), "reset": True}
    )
    again = httpx.post(f"{server.url}/v1/streams/retry-ttf/frames", json=body).json()
    assert again == {**first, "next_seq": 12}
    assert_same(Estimates.read(again), offline_answers(runtime, x[:5], fps=25))


@pytest.fixture(scope="module")
def v1_server(tiny_model_v1, tmp_path_factory):
    with ServerProcess(tiny_model_v1, tmp_path_factory.mktemp("v1") / "server.log") as srv:
        yield srv


def test_a_version_1_cell_is_served_with_null_bands(v1_server, tiny_model_v1, runtime):
    from progress_stream.engine.runtime import CellRuntime

    v1 = CellRuntime(tiny_model_v1, providers="cpu")
    x = frames(np.random.default_rng(44), 6)
    expected = offline_answers(v1, x, fps=FPS)
    assert expected.band is None
    np.testing.assert_array_equal(expected.progress, offline_answers(runtime, x).progress)  # the same graph
    model = httpx.get(f"{v1_server.url}/v1/model").json()
    created = httpx.put(f"{v1_server.url}/v1/streams/old-cell", params={"fps": FPS}).json()
    assert model["coverage"] is None and model["format_version"] == "1" and created["model"]["coverage"] is None
    reply = httpx.post(f"{v1_server.url}/v1/streams/old-cell/frames", json={"seq": 0, "embeddings": x.tolist()})
    assert reply.json()["band"] is None and reply.json()["remaining_band"] is None
    assert_same(Estimates.read(reply.json()), expected)

    async def sockets() -> tuple[bytes, bytes]:
        async with connect(f"{v1_server.ws_url}/v1/streams/old-socket/ws?fps={FPS}") as ws:
            await ws.send(binary_request(0, x))
            single = await ws.recv()
        async with connect(f"{v1_server.ws_url}/v1/ws") as gw:
            await gw.send(orjson.dumps({"attach": ["old-gw"], "fps": FPS}).decode())
            await gw.recv()
            await gw.send(encode_entries([(0, 0, x, False)]))
            return single, await gw.recv()

    single, tick = asyncio.run(sockets())
    assert REPLY_HEADER.unpack_from(single)[3] == FLAG_REMAINING | FLAG_SECONDS  # no band
    assert_same(parse_binary_reply(single)[2], expected)
    assert_same(decode_tick_reply(tick)[0][4], expected)


@pytest.mark.parametrize("fps", [0, -1, 1000.5, 1e-9, "x"])
def test_a_bad_frame_rate_is_refused_naming_fps_wherever_a_stream_is_opened(ws_server, fps):
    url = ws_server.url
    for response in (
        httpx.post(f"{url}/v1/streams", json={"stream_id": "bad-fps", "fps": fps}),
        httpx.put(f"{url}/v1/streams/bad-fps", params={"fps": fps}),
    ):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] == "fps"

    with pytest.raises(InvalidStatus) as refused:
        SyncWsStreamSession(ws_server.ws_url, stream_id="bad-fps", fps=fps)
    assert refused.value.response.status_code == 422
    assert orjson.loads(refused.value.response.body)["error"]["field"] == "fps"
    assert [e["error"]["field"] for e in gateway_attach(ws_server, fps)] == ["fps", "fps"]
    assert httpx.get(f"{url}/v1/streams/bad-fps").status_code == 404  # nothing was created


@pytest.mark.parametrize("fps", ["30", True])
def test_a_json_frame_rate_is_a_json_number(server, fps):
    refused = httpx.post(f"{server.url}/v1/streams", json={"fps": fps})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "fps"
    assert [e["error"]["field"] for e in gateway_attach(server, fps)] == ["fps", "fps"]


def gateway_attach(server: ServerProcess, fps: object) -> list[dict]:
    """Attach two streams at ``fps``; each one's entry. The connection goes on: another attach is answered."""

    async def attach() -> list[dict]:
        async with connect(f"{server.ws_url}/v1/ws") as gw:
            await gw.send(orjson.dumps({"attach": ["bad-fps-1", "bad-fps-2"], "fps": fps}).decode())
            entries = orjson.loads(await gw.recv())["attached"]
            await gw.send(orjson.dumps({"attach": ["good-fps"], "fps": 5}).decode())
            assert orjson.loads(await gw.recv())["attached"][0]["handle"] == 0
            return entries

    return asyncio.run(attach())


def test_a_stream_opened_again_with_a_rate_answers_at_it(server, runtime):
    x = frames(np.random.default_rng(45), 4)
    assert httpx.put(f"{server.url}/v1/streams/rerated").json()["fps"] is None
    httpx.post(f"{server.url}/v1/streams/rerated/frames", json={"seq": 0, "embeddings": x[:2].tolist()})
    assert httpx.put(f"{server.url}/v1/streams/rerated", params={"fps": 10}).json()["fps"] == 10
    assert httpx.put(f"{server.url}/v1/streams/rerated").json()["fps"] == 10  # an open without one keeps it
    rest = httpx.post(f"{server.url}/v1/streams/rerated/frames", json={"seq": 2, "embeddings": x[2:].tolist()})
    assert_same(Estimates.read(rest.json()), offline_answers(runtime, x, fps=10)[2:])


def test_a_bad_frame_rate_for_an_open_stream_leaves_it_as_it_was(server, runtime):
    x = frames(np.random.default_rng(46), 4)
    url = f"{server.url}/v1/streams/kept-rate"
    assert httpx.put(url, params={"fps": 10}).status_code == 201
    httpx.post(f"{url}/frames", json={"seq": 0, "embeddings": x[:2].tolist()})
    before = httpx.get(url).json()
    for bad in (0, "x"):
        refused = httpx.put(url, params={"fps": bad})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "fps"

    async def attach() -> dict:
        async with connect(f"{server.ws_url}/v1/ws") as gw:
            await gw.send(orjson.dumps({"attach": ["kept-rate"], "fps": -1}).decode())
            return orjson.loads(await gw.recv())["attached"][0]

    assert asyncio.run(attach())["error"]["field"] == "fps"
    after = httpx.get(url).json()
    assert {k: after[k] for k in ("fps", "next_seq", "step")} == {k: before[k] for k in ("fps", "next_seq", "step")}
    rest = httpx.post(f"{url}/frames", json={"seq": 2, "embeddings": x[2:].tolist()})
    assert_same(Estimates.read(rest.json()), offline_answers(runtime, x, fps=10)[2:])
