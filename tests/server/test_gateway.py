"""The gateway: many streams on one connection (WebSocket at /v1/ws, on both data planes, and POST /v1/frames),
against real servers; every answer is checked against the cell run offline per stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from progress_stream.client import Gateway, SyncGateway, TickError
from progress_stream.contract.gateway import decode_tick_reply, encode_entries, encode_tick
from progress_stream.server.process import RedisProcess, ServerProcess
from tests.conftest import DIM, frames, offline

STREAMS = 12


def ws(server: ServerProcess) -> str:
    return f"{server.ws_url}/v1/ws"


def state(server: ServerProcess, sid: str) -> dict:
    return httpx.get(f"{server.url}/v1/streams/{sid}").json()


@pytest.mark.parametrize("binary", [True, False])
def test_many_streams_on_one_socket_answer_exactly(ws_server, runtime, binary):
    rng = np.random.default_rng(7)
    ids = [f"gw-{binary:d}-{i}" for i in range(STREAMS)]
    x = {sid: frames(rng, 9) for sid in ids}
    with SyncGateway(ws_server.ws_url, binary=binary) as gw:
        assert gw.attach(*ids) == dict.fromkeys(ids, 0)
        got = {sid: [] for sid in ids}
        for lo, hi in ((0, 1), (1, 4), (4, 5), (5, 9)):  # ticks of 1 and of several frames per stream
            answers = gw.tick({sid: x[sid][lo:hi] for sid in ids}, resets=())
            for sid in ids:
                got[sid].append(answers[sid])
    for sid in ids:
        np.testing.assert_allclose(np.concatenate(got[sid]), offline(runtime, x[sid]), atol=1e-5)
        assert state(ws_server, sid)["next_seq"] == 9


def test_one_conflicting_entry_leaves_the_others_answered_and_unchanged(ws_server, runtime):
    rng = np.random.default_rng(8)
    x = {sid: frames(rng, 3) for sid in ("mix-a", "mix-b", "mix-c")}

    async def run() -> tuple[list, dict]:
        async with connect(ws(ws_server)) as sock:
            await sock.send(orjson.dumps({"attach": list(x)}).decode())
            handles = {e["stream_id"]: e["handle"] for e in orjson.loads(await sock.recv())["attached"]}
            entries = [(handles["mix-a"], 0, x["mix-a"][:1], False), (handles["mix-b"], 5, x["mix-b"][:1], False)]
            entries.append((handles["mix-c"], 0, x["mix-c"][:2], False))  # another length: the general path
            await sock.send(encode_entries(entries))
            first = decode_tick_reply(await sock.recv())
            await sock.send(encode_tick(np.array([handles["mix-b"]]), np.array([0]), x["mix-b"][None, :1]))
            second = decode_tick_reply(await sock.recv())
            return first + second, handles

    replies, handles = asyncio.run(run())
    a, b, c, b_again = replies
    assert a[3] is None and c[3] is None
    np.testing.assert_allclose(a[4], offline(runtime, x["mix-a"][:1]), atol=1e-5)
    np.testing.assert_allclose(c[4], offline(runtime, x["mix-c"][:2]), atol=1e-5)
    assert (b[0], b[1], b[2], b[3], len(b[4])) == (handles["mix-b"], 5, 0, "seq_conflict", 0)  # expected seq 0
    np.testing.assert_allclose(b_again[4], offline(runtime, x["mix-b"][:1]), atol=1e-5)
    assert [state(ws_server, s)["next_seq"] for s in x] == [1, 1, 2]


def test_an_entry_repeated_in_one_tick_is_answered_twice_and_the_others_are_unchanged(ws_server, runtime):
    """A client that repeats an entry within a tick (binary, then JSON) gets the same answers twice; the
    connection stays usable and no stream takes the frames twice."""
    rng = np.random.default_rng(14)
    x = {sid: frames(rng, 2) for sid in ("twice-a", "twice-b")}

    async def run() -> tuple[list, dict, list]:
        async with connect(ws(ws_server)) as sock:
            await sock.send(orjson.dumps({"attach": list(x)}).decode())
            handles = {e["stream_id"]: e["handle"] for e in orjson.loads(await sock.recv())["attached"]}
            a, b = handles["twice-a"], handles["twice-b"]
            first = x["twice-a"][None, :1]
            await sock.send(encode_tick(np.array([a, a, b]), np.zeros(3), np.stack([*first, *first, x["twice-b"][:1]])))
            binary = decode_tick_reply(await asyncio.wait_for(sock.recv(), 10))
            entry = {"stream_id": "twice-a", "seq": 1, "embeddings": x["twice-a"][1:].tolist()}
            await sock.send(orjson.dumps({"frames": [entry, entry]}).decode())
            text = orjson.loads(await asyncio.wait_for(sock.recv(), 10))["results"]
            return binary, handles, text

    binary, handles, text = asyncio.run(run())
    assert [e[0] for e in binary] == [handles["twice-a"], handles["twice-a"], handles["twice-b"]]
    assert [e[3] for e in binary] == [None, None, None] and [e[2] for e in binary] == [1, 1, 1]
    np.testing.assert_array_equal(binary[0][4].progress, binary[1][4].progress)
    np.testing.assert_allclose(binary[0][4], offline(runtime, x["twice-a"][:1]), atol=1e-5)
    np.testing.assert_allclose(binary[2][4], offline(runtime, x["twice-b"][:1]), atol=1e-5)
    assert text[0] == text[1] and text[0]["next_seq"] == 2
    np.testing.assert_allclose(text[0]["progress"], offline(runtime, x["twice-a"])[1:], atol=1e-5)
    assert [state(ws_server, sid)["next_seq"] for sid in x] == [2, 1]


def test_malformed_entries_are_answered_in_their_entry_and_change_nothing(ws_server, runtime):
    rng = np.random.default_rng(9)
    good, bad = frames(rng, 1), frames(rng, 1)
    bad[0, 3] = np.nan

    async def run() -> list:
        async with connect(ws(ws_server)) as sock:
            await sock.send(orjson.dumps({"attach": ["ok-1", "nan-1"]}).decode())
            await sock.recv()
            await sock.send(encode_entries([(0, 0, good, False), (1, 0, bad, False), (9, 0, good, False)]))
            binary = decode_tick_reply(await sock.recv())
            body = {
                "frames": [
                    {"stream_id": "ok-1", "seq": 1, "embeddings": good.tolist()},
                    {"stream_id": "nan-1", "seq": 0, "embeddings": [[0.5] * (DIM + 1)]},
                    {"stream_id": "nan-1", "seq": "x", "embeddings": good.tolist()},
                    {"stream_id": "not-attached", "seq": 0, "embeddings": good.tolist()},
                ]
            }
            await sock.send(orjson.dumps(body).decode())
            return binary, orjson.loads(await sock.recv())["results"]

    binary, results = asyncio.run(run())
    assert [e[3] for e in binary] == [None, "not_finite", "invalid_input"]
    np.testing.assert_allclose(binary[0][4], offline(runtime, good), atol=1e-5)
    assert "progress" in results[0] and results[0]["next_seq"] == 2
    assert results[1]["error"]["code"] == "wrong_dimension" and results[1]["error"]["field"].startswith("frames[1]")
    assert results[2]["error"]["code"] == "invalid_input" and results[2]["seq"] is None
    assert results[3]["error"]["code"] == "invalid_input" and results[3]["stream_id"] == "not-attached"
    assert state(ws_server, "nan-1")["next_seq"] == 0 and state(ws_server, "ok-1")["next_seq"] == 2


def test_broken_framing_closes_the_gateway(ws_server):
    async def run() -> tuple[dict, int]:
        async with connect(ws(ws_server)) as sock:
            await sock.send(b"\x01\x00")
            message = orjson.loads(await sock.recv())
            await sock.wait_closed()
            return message, sock.close_code

    message, code = asyncio.run(run())
    assert message["error"]["code"] == "protocol_violation" and code == 1008


def test_a_tick_larger_than_a_stream_message_is_answered_and_one_past_a_tick_closes_1009(ws_server, runtime):
    rng = np.random.default_rng(11)
    ids = [f"big-{i}" for i in range(40)]
    x = {sid: frames(rng, 16) for sid in ids}  # 640 frames: about 83 KB, ten stream messages' worth
    with SyncGateway(ws_server.ws_url) as gw:
        answers = gw.tick(x)
    for sid in ids:
        np.testing.assert_allclose(answers[sid].progress, offline(runtime, x[sid]), atol=1e-5)

    async def too_big() -> int:
        async with connect(ws(ws_server), max_size=None, compression=None) as sock:
            with pytest.raises(ConnectionClosedError):
                await sock.send(b"\0" * (600 * 1024))  # past a tick of PROGRESS_MAX_FRAMES_PER_TICK frames
                await sock.recv()
            return sock.close_code

    assert asyncio.run(too_big()) == 1009
    assert all(state(ws_server, sid)["next_seq"] == 16 for sid in ids)  # the streams are as they were


def test_http_batch_answers_each_entry(server, runtime):
    rng = np.random.default_rng(10)
    x = frames(rng, 4)
    httpx.put(f"{server.url}/v1/streams/http-gw")
    body = {
        "frames": [
            {"stream_id": "http-gw", "seq": 0, "embeddings": x[:2].tolist()},
            {"stream_id": "http-missing", "seq": 0, "embeddings": x[:1].tolist()},
        ]
    }
    first = httpx.post(f"{server.url}/v1/frames", json=body).json()["results"]
    second = httpx.post(
        f"{server.url}/v1/frames", json={"frames": [{"stream_id": "http-gw", "seq": 2, "embeddings": x[2:].tolist()}]}
    )
    assert first[1]["error"]["code"] == "stream_not_found" and first[0]["next_seq"] == 2
    np.testing.assert_allclose(
        first[0]["progress"] + second.json()["results"][0]["progress"], offline(runtime, x), atol=1e-5
    )
    assert (
        httpx.post(f"{server.url}/v1/frames", content=b"[]", headers={"Content-Type": "application/json"}).status_code
        == 400
    )


def test_admission_is_the_same_as_for_every_route(tiny_model, tmp_path):
    with ServerProcess(tiny_model, tmp_path / "keyed.log", api_key="s3cret") as srv:
        with pytest.raises(InvalidStatus) as refused:
            SyncGateway(srv.ws_url)
        assert refused.value.response.status_code == 401
        assert httpx.post(f"{srv.url}/v1/frames", json={"frames": []}).status_code == 401
        with SyncGateway(srv.ws_url, api_key="s3cret") as gw:
            assert gw.attach("keyed") == {"keyed": 0}


def test_after_a_kill_9_and_a_restore_every_stream_is_exact(tiny_model, tmp_path: Path, runtime):
    rng = np.random.default_rng(11)
    ids = [f"cam-{i}" for i in range(8)]
    x = {sid: frames(rng, 30) for sid in ids}
    redis = RedisProcess().start()
    settings = {"state_url": redis.url, "snapshot_interval_s": 0.2}
    servers = [ServerProcess(tiny_model, tmp_path / "a.log", **settings).start()]

    async def run() -> tuple[dict[str, list[np.ndarray]], int]:
        gw = await Gateway.open(servers[0].ws_url)
        got: dict[str, list[np.ndarray]] = {sid: [] for sid in ids}
        for t in range(30):
            if t == 20:  # some of the last frames were never stored: the restored streams are behind
                servers[0].kill()
                servers.append(ServerProcess(tiny_model, tmp_path / "b.log", port=servers[0].port, **settings).start())
            answers = await gw.tick({sid: x[sid][t : t + 1] for sid in ids})
            for sid in ids:
                got[sid].append(answers[sid])
            await asyncio.sleep(0.02)
        replayed = sum(s.log.replayed for s in gw.streams.values())
        await gw.aclose()
        return got, replayed

    try:
        got, replayed = asyncio.run(run())
        restores = httpx.get(f"{servers[1].url}/metrics").text
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.kill()
        redis.stop()
    for sid in ids:
        np.testing.assert_allclose(np.concatenate(got[sid]), offline(runtime, x[sid]), atol=1e-5)
    assert "progress_store_restores_total 8.0" in restores  # every stream taken over from the store
    assert replayed >= 0


def test_a_gateway_attaches_only_its_own_keys_streams(tiny_model, tmp_path, runtime):
    x = frames(np.random.default_rng(12), 1)
    with ServerProcess(tiny_model, tmp_path / "tenants.log", api_keys="alice:ka,bob:kb") as srv:
        with SyncGateway(srv.ws_url, api_key="ka") as alice:
            np.testing.assert_allclose(alice.tick({"cam-a": x})["cam-a"], offline(runtime, x), atol=1e-5)
        with SyncGateway(srv.ws_url, api_key="kb") as bob:
            bob.conn.send(orjson.dumps({"attach": ["cam-a", "cam-b"]}).decode())
            attached = orjson.loads(bob.conn.recv())["attached"]
        body = {"frames": [{"stream_id": "cam-a", "seq": 1, "embeddings": x.tolist()}]}
        stolen = httpx.post(f"{srv.url}/v1/frames", json=body, headers={"Authorization": "Bearer kb"})
        mine = httpx.get(f"{srv.url}/v1/streams/cam-a", headers={"Authorization": "Bearer ka"}).json()
    assert attached[0]["error"]["code"] == "stream_id_taken" and "handle" not in attached[0]
    assert attached[1]["handle"] == 0 and attached[1]["next_seq"] == 0
    assert stolen.json()["results"][0]["error"]["code"] == "stream_not_found"
    assert mine["next_seq"] == 1  # bob changed nothing


def test_a_refused_entry_is_taken_back_and_the_others_are_answered(ws_server, runtime):
    """A chunk the server refuses for its values never took a seq: the tick answers the other streams (in the
    error it raises), and the refused stream's next chunk takes the refused one's place."""
    rng = np.random.default_rng(12)
    ids = ["taken-back-0", "taken-back-1"]
    x = {sid: frames(rng, 3) for sid in ids}
    bad = x[ids[1]][:1].copy()
    bad[0, 0] = np.nan
    with SyncGateway(ws_server.ws_url) as gw:
        gw.attach(*ids)
        with pytest.raises(TickError) as refused:
            gw.tick({ids[0]: x[ids[0]][:1], ids[1]: bad})
        assert refused.value.status == 422 and set(refused.value.errors) == {ids[1]}
        np.testing.assert_allclose(refused.value.answers[ids[0]], offline(runtime, x[ids[0]][:1]), atol=1e-5)
        later = gw.tick({sid: x[sid][1:] if sid == ids[0] else x[sid] for sid in ids})
    np.testing.assert_allclose(later[ids[1]], offline(runtime, x[ids[1]]), atol=1e-5)
    np.testing.assert_allclose(later[ids[0]], offline(runtime, x[ids[0]])[1:], atol=1e-5)
    assert [state(ws_server, sid)["next_seq"] for sid in ids] == [3, 3]


@pytest.mark.parametrize("binary", [True, False])
def test_after_a_reconnect_every_stream_gets_its_own_answers(ws_server, runtime, binary):
    """A reconnect attaches the streams again (grouped by frame rate: in another order, so with other handles):
    the message is encoded with the new connection's handles."""
    rng = np.random.default_rng(13)
    ids = [f"again-{binary:d}-{i}" for i in range(3)]
    x = {sid: frames(rng, 4) for sid in ids}
    with SyncGateway(ws_server.ws_url, binary=binary) as gw:
        gw.attach(ids[0])
        gw.attach(ids[1], fps=30)
        gw.attach(ids[2])
        first = gw.tick({sid: x[sid][:2] for sid in ids})
        gw.conn.close()  # the connection drops between ticks
        second = gw.tick({sid: x[sid][2:] for sid in ids})
    for sid in ids:
        np.testing.assert_allclose(np.concatenate([first[sid], second[sid]]), offline(runtime, x[sid]), atol=1e-5)
