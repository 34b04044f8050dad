"""The shared store's faults, each met by a real server and a real ``redis-server``: writes the store
refuses, keys it cannot read, deployments sharing one database, many lookups at once, streams kept alive
without new frames, a stop whose state file cannot be written, and temporary files left by a kill."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import redis
from pydantic import ValidationError
from websockets.asyncio.client import connect

from progress_stream.contract.binary import binary_request, parse_binary_reply
from progress_stream.engine.durability.store import PREFIX, WRITTEN, RedisStore, StreamState
from progress_stream.engine.streams import StreamTable
from progress_stream.server.process import ServerProcess
from progress_stream.server.settings import Settings
from tests.conftest import PLANES, frames
from tests.engine.durability.test_shared_state import RedisServer, replica, send, wait_stored
from tests.server.test_operations import scrape


@pytest.fixture
def store() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def wait_for(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not {what}"
        time.sleep(0.05)


#: The headers of a WebSocket handshake (a refused one is answered like any request).
WS_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def readiness(url: str) -> dict:
    return httpx.get(f"{url}/readyz").json()


# --- 13: a write the store refuses ----------------------------------------------------------------


def test_refused_writes_are_counted_and_readyz_reports_the_unstored_streams(tiny_model, tmp_path, store):
    x = frames(np.random.default_rng(41), 10)
    client = redis.Redis(port=store.port)
    # a key left by another model, further along than the new stream that takes its id here
    client.hset(PREFIX + "alien", mapping={"seq": 50, "model": "another", "window": 512, "created": 0, "blob": b""})
    with replica(tiny_model, tmp_path / "a.log", store) as a:
        assert httpx.put(f"{a.url}/v1/streams/alien").json()["next_seq"] == 0
        assert send(a.url, "alien", 0, x[:3]).status_code == 200
        httpx.put(f"{a.url}/v1/streams/ahead")
        send(a.url, "ahead", 0, x[:5])
        wait_stored(store, "ahead", 5)
        client.hset(PREFIX + "ahead", "seq", 100)  # another replica has gone further with it
        assert send(a.url, "ahead", 5, x[5:8]).status_code == 200
        unstored = {"ready": True, "durability": "partial", "unstored_streams": 2}
        wait_for(lambda: readiness(a.url) == unstored, f"{unstored} (readyz: {readiness(a.url)})")
        assert scrape(a.url)["progress_store_refused_writes_total"] >= 2
        assert store.stored_seq("alien") == 50 and store.stored_seq("ahead") == 100  # refused, not overwritten
        client.delete(PREFIX + "alien")  # the operator clears the other deployment's key: the retry lands
        wait_stored(store, "alien", 3)
        wait_for(lambda: readiness(a.url)["unstored_streams"] == 1, "one stream unstored")
        assert httpx.delete(f"{a.url}/v1/streams/ahead").status_code == 204  # a stream no longer held
        ok = {"ready": True, "durability": "ok", "unstored_streams": 0}
        wait_for(lambda: readiness(a.url) == ok, f"{ok} (readyz: {readiness(a.url)})")


# --- 14: a key the server cannot read ------------------------------------------------------------


def stored_fields(runtime, seq: object, **fields: object) -> dict:
    """A stream's hash as a replica of this model writes it (zero state), with ``fields`` replaced."""
    layout = StreamTable.layout(runtime.hidden_dim, 512)
    blob = b"".join(np.zeros(items, dtype).tobytes() for dtype, items in layout.values())
    return {"seq": seq, "model": runtime.checkpoint, "window": 512, "created": 0.0, "blob": blob, **fields}


def test_a_bad_key_is_skipped_and_the_other_streams_keep_their_writes(tiny_model, tmp_path, store):
    x = frames(np.random.default_rng(42), 9)
    client = redis.Redis(port=store.port)
    with replica(tiny_model, tmp_path / "a.log", store) as a:
        for sid in ("good", "typed", "garbled"):
            httpx.put(f"{a.url}/v1/streams/{sid}")
            send(a.url, sid, 0, x[:3])
            wait_stored(store, sid, 3)
        client.delete(PREFIX + "typed")
        client.set(PREFIX + "typed", "not a hash")  # the wrong type
        client.hset(PREFIX + "garbled", "seq", "three")  # not a number
        for sid in ("good", "typed", "garbled"):
            assert send(a.url, sid, 3, x[3:6]).status_code == 200  # every stream held is still served
        wait_stored(store, "good", 6)
        unstored = {"ready": True, "durability": "partial", "unstored_streams": 2}  # not degraded
        wait_for(lambda: readiness(a.url) == unstored, f"{unstored} (readyz: {readiness(a.url)})")
        assert send(a.url, "good", 6, x[6:9]).status_code == 200
        wait_stored(store, "good", 9, timeout=5)  # written at the next interval: no backoff
        metrics = scrape(a.url)
        assert metrics["progress_store_bad_keys_total"] >= 2 and metrics["progress_store_errors_total"] == 0
        assert client.get(PREFIX + "typed") == b"not a hash" and client.hget(PREFIX + "garbled", "seq") == b"three"
    assert "stream 'typed'" in (tmp_path / "a.log").read_text()  # logged, by name


def test_a_stream_whose_key_is_bad_answers_a_json_error_until_deleted(tiny_model, tmp_path, store, runtime):
    client = redis.Redis(port=store.port)
    client.hset(PREFIX + "fine", mapping=stored_fields(runtime, 7))
    client.set(PREFIX + "typed", "not a hash")
    client.rpush(PREFIX + "listed", "a", "b")
    client.hset(PREFIX + "garbled", mapping=stored_fields(runtime, "seven"))
    client.hset(PREFIX + "short", mapping=stored_fields(runtime, 7, blob=b"\0" * 10))
    client.hset(PREFIX + "undated", mapping=stored_fields(runtime, 7, created="yesterday"))
    bad = ("typed", "listed", "garbled", "short", "undated")
    with replica(tiny_model, tmp_path / "a.log", store) as a:
        assert httpx.get(f"{a.url}/v1/streams/fine").json()["processed_seq"] == 7  # a good key is restored
        for sid in bad:
            for answer in (
                httpx.get(f"{a.url}/v1/streams/{sid}"),
                httpx.put(f"{a.url}/v1/streams/{sid}"),
                send(a.url, sid, 0, frames(np.random.default_rng(43), 2)),
            ):
                assert answer.status_code == 500 and answer.json()["error"]["code"] == "stream_unreadable", answer.text
        refused = httpx.get(f"{a.url}/v1/streams/typed/ws", headers=WS_UPGRADE)  # a handshake: the same answer
        assert refused.status_code == 500 and refused.json()["error"]["code"] == "stream_unreadable"
        assert readiness(a.url) == {"ready": True, "durability": "ok", "unstored_streams": 0}
        assert scrape(a.url)["progress_store_bad_keys_total"] >= 3 * len(bad)
        for sid in bad:  # the way out: delete the stream, then it starts anew
            assert httpx.delete(f"{a.url}/v1/streams/{sid}").status_code == 204
            created = httpx.put(f"{a.url}/v1/streams/{sid}")
            assert created.status_code == 201 and created.json()["next_seq"] == 0


@pytest.mark.parametrize("plane", PLANES)
def test_a_socket_that_meets_a_bad_key_answers_and_stays_open(tiny_model, tmp_path, store, plane):
    x = frames(np.random.default_rng(44), 12)
    with replica(tiny_model, tmp_path / "a.log", store, ws_plane=plane) as a:
        httpx.put(f"{a.url}/v1/streams/sock")
        send(a.url, "sock", 0, x[:5])
        wait_stored(store, "sock", 5)
        redis.Redis(port=store.port).hset(PREFIX + "sock", "seq", "ten")  # the key went bad meanwhile

        async def talk() -> tuple[dict, tuple]:
            async with connect(f"{a.ws_url}/v1/streams/sock/ws", compression=None) as ws:
                # past the copy held here: it would catch up from the store, whose key cannot be read
                await ws.send(binary_request(10, x[10:12]))
                error = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
                await ws.send(binary_request(5, x[5:7]))  # resumed where the error says
                return error, parse_binary_reply(await asyncio.wait_for(ws.recv(), 10))

        error, reply = asyncio.run(talk())
    assert error["seq"] == 10 and error["error"]["code"] == "seq_conflict" and error["error"]["expected_seq"] == 5
    assert reply[:2] == (5, 7)


# --- 15: deployments sharing one database --------------------------------------------------------


def test_deployments_with_their_own_prefix_never_read_each_others_streams(tiny_model, tmp_path, store):
    x = frames(np.random.default_rng(45), 6)
    client = redis.Redis(port=store.port)
    with (
        replica(tiny_model, tmp_path / "a.log", store, state_prefix="blue") as a,
        replica(tiny_model, tmp_path / "b.log", store, state_prefix="prod:green") as b,
    ):
        httpx.put(f"{a.url}/v1/streams/cam")
        send(a.url, "cam", 0, x[:4])
        wait_for(lambda: client.hget("blue:stream:cam", "seq") == b"4", "blue:stream:cam at seq 4")
        created = httpx.put(f"{b.url}/v1/streams/cam")  # the same id in the other deployment: its own stream
        assert created.status_code == 201 and created.json()["next_seq"] == 0
        send(b.url, "cam", 0, x[:2])
        wait_for(lambda: client.hget("prod:green:stream:cam", "seq") == b"2", "prod:green:stream:cam at seq 2")
        assert sorted(client.keys("*")) == [b"blue:stream:cam", b"prod:green:stream:cam"]
        assert httpx.delete(f"{b.url}/v1/streams/cam").status_code == 204
        assert client.keys("*") == [b"blue:stream:cam"]  # the other deployment's stream is untouched
        assert httpx.get(f"{a.url}/v1/streams/cam").json()["processed_seq"] == 4


@pytest.mark.parametrize("prefix", ["", "a b", "progress:*", "x" * 41, ":leading", "ünï"])
def test_the_state_prefix_is_a_short_string_of_safe_characters(prefix):
    with pytest.raises(ValidationError, match="state_prefix"):
        Settings(state_prefix=prefix)
    assert Settings(state_prefix="prod:progress-2.v1").state_prefix == "prod:progress-2.v1"


# --- 16: the pool, refreshes, the final write, temporary files ------------------------------------


def test_300_concurrent_takeovers_all_answer(tiny_model, tmp_path, store, runtime):
    layout = StreamTable.layout(runtime.hidden_dim, 512)
    rows = {name: np.zeros(items, dtype) for name, (dtype, items) in layout.items()}
    ids = [f"held-elsewhere-{i}" for i in range(300)]

    async def seed() -> list[int]:
        writer = RedisStore(store.url, None, runtime.checkpoint, layout, 600)
        try:
            return await writer.save([StreamState(sid, i + 1, 0.0, rows) for i, sid in enumerate(ids)])
        finally:
            await writer.close()

    assert asyncio.run(seed()) == [WRITTEN] * len(ids)

    async def look_up(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(ids))
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
            return await asyncio.gather(*(http.get(f"/v1/streams/{sid}") for sid in ids))

    with replica(tiny_model, tmp_path / "a.log", store) as a:
        answers = asyncio.run(look_up(a.url))
        assert [r.status_code for r in answers] == [200] * len(ids), {r.text for r in answers if r.is_error}
        assert [r.json()["processed_seq"] for r in answers] == [i + 1 for i in range(len(ids))]
        assert scrape(a.url)["progress_store_restores_total"] == len(ids)


def test_streams_kept_alive_by_replays_and_reconnects_keep_their_keys(tiny_model, tmp_path, store):
    x = frames(np.random.default_rng(46), 4)
    client = redis.Redis(port=store.port)
    ttl = 2.0
    with replica(tiny_model, tmp_path / "a.log", store, idle_ttl_s=ttl) as a:
        for sid in ("replayed", "rejoined"):
            httpx.put(f"{a.url}/v1/streams/{sid}")
            send(a.url, sid, 0, x)
            wait_stored(store, sid, 4)

        async def reconnect() -> None:  # a WebSocket that opens and leaves without a frame
            async with connect(f"{a.ws_url}/v1/streams/rejoined/ws", compression=None):
                pass

        deadline = time.monotonic() + 2.5 * ttl
        while time.monotonic() < deadline:  # used, but the processed seq never moves
            assert send(a.url, "replayed", 0, x).status_code == 200  # a retry, answered from the window
            asyncio.run(reconnect())
            time.sleep(0.25)
        for sid in ("replayed", "rejoined"):
            assert store.stored_seq(sid) == 4, f"{sid} expired from the store while in use"
            assert 0 < client.pttl(PREFIX + sid) <= ttl * 1000
            assert httpx.get(f"{a.url}/v1/streams/{sid}").json()["processed_seq"] == 4  # held here too


def test_a_stop_whose_state_file_cannot_be_written_still_writes_the_store(tiny_model, tmp_path, store):
    folder = tmp_path / "state"
    a = replica(tiny_model, tmp_path / "a.log", store, state_file=folder / "streams.state", snapshot_interval_s=60)
    a.start()  # writes nothing before the stop but a new stream's first state (seq 0)
    try:
        httpx.put(f"{a.url}/v1/streams/last")
        assert send(a.url, "last", 0, frames(np.random.default_rng(47), 10)).status_code == 200
        folder.rename(tmp_path / "moved")
        folder.write_text("the state file's folder, replaced by a file")
        assert a.terminate() in (0, -signal.SIGTERM)
    finally:
        a.kill()
    assert store.stored_seq("last") == 10
    assert "final snapshot to" in (tmp_path / "a.log").read_text()  # the failed snapshot is logged


def test_temp_files_left_by_a_killed_snapshot_are_removed_at_start_and_nothing_else(tiny_model, tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    ours = []
    for _ in range(2):  # named as write_snapshot names them, half written when the server was killed
        fd, name = tempfile.mkstemp(prefix=".streams.state.", dir=folder)
        os.write(fd, b"PK\x03\x04 half a snapshot")
        os.close(fd)
        ours.append(Path(name))
    others = {
        ".streams.state.backup": b"6 characters, not 8",
        ".streams.state.ABCD1234": b"upper case: never a name we made",
        ".streams.state.abcd1234.keep": b"a suffix",
        ".other.state.abcd1234": b"another state file's",
        "streams.state.abcd1234": b"no leading dot",
        "streams.state.rejected-20240101T000000Z": b"moved aside, kept for the operator",
    }
    for name, content in others.items():
        (folder / name).write_bytes(content)
    (folder / ".streams.state.dir12345").mkdir()  # our pattern, but a folder
    with ServerProcess(tiny_model, tmp_path / "a.log", state_file=folder / "streams.state"):
        assert not any(path.exists() for path in ours)
        assert {name: (folder / name).read_bytes() for name in others} == others
        assert (folder / ".streams.state.dir12345").is_dir()
    assert "removed 2 temporary files" in (tmp_path / "a.log").read_text()
