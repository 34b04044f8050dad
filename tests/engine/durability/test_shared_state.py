"""Stream state shared through a real ``redis-server`` (Debian's, started here on a free port): takeover
after kill -9 and SIGTERM, stale copies, write-forward, Redis going away and back, TTL and DELETE."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from progress_stream.contract.replies import Estimates
from progress_stream.engine.durability.store import FURTHER_ALONG, PREFIX, RedisStore, StreamState
from progress_stream.engine.streams import ADDED_ARRAYS, StreamTable
from progress_stream.server.process import RedisProcess, ServerProcess, free_port
from tests.conftest import assert_same, frames, offline, offline_answers
from tests.engine.durability.test_state_files import serve_once

INTERVAL = 0.2  # snapshot interval of the replicas here


class RedisServer(RedisProcess):
    def stored_seq(self, stream_id: str) -> int | None:
        seq = redis.Redis(port=self.port).hget(PREFIX + stream_id, "seq")
        return None if seq is None else int(seq)


@pytest.fixture
def store() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def replica(model: Path, log: Path, store: RedisServer, **settings: object) -> ServerProcess:
    return ServerProcess(model, log, **{"state_url": store.url, "snapshot_interval_s": INTERVAL, **settings})


def send(url: str, sid: str, seq: int, x: np.ndarray) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{sid}/frames", json={"seq": seq, "embeddings": x.tolist()})


def wait_stored(store: RedisServer, sid: str, seq: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while store.stored_seq(sid) != seq:
        assert time.monotonic() < deadline, f"store holds seq {store.stored_seq(sid)} of {sid}, not {seq}"
        time.sleep(0.05)


def test_takeover_after_kill_9_replays_from_the_last_write_and_stays_exact(tiny_model, tmp_path, store, runtime):
    x = frames(np.random.default_rng(31), 40)
    a = replica(tiny_model, tmp_path / "a.log", store).start()
    httpx.put(f"{a.url}/v1/streams/cam")
    out = {}
    for seq in range(0, 20, 5):
        out.update(enumerate(send(a.url, "cam", seq, x[seq : seq + 5]).json()["progress"], start=seq))
    wait_stored(store, "cam", 20)
    send(a.url, "cam", 20, x[20:25])  # processed, perhaps never written
    a.kill()
    with replica(tiny_model, tmp_path / "b.log", store) as b:
        conflict = send(b.url, "cam", 25, x[25:30])  # the client goes on where it was
        assert conflict.status_code == 409
        resume = conflict.json()["error"]["expected_seq"]
        assert resume in (20, 25)  # the last write: never older than what was stored
        for seq in range(resume, 40, 5):
            out.update(enumerate(send(b.url, "cam", seq, x[seq : seq + 5]).json()["progress"], start=seq))
        metrics = httpx.get(f"{b.url}/metrics").text
    np.testing.assert_allclose([out[i] for i in range(40)], offline(runtime, x), atol=1e-5)
    assert "progress_store_restores_total 1.0" in metrics


def test_takeover_after_sigterm_continues_exactly_with_no_replay(tiny_model, tmp_path, store, runtime):
    x = frames(np.random.default_rng(32), 30)
    a = replica(tiny_model, tmp_path / "a.log", store, snapshot_interval_s=60).start()  # only the final write
    first = send(a.url, "line", 0, x[:17]) if httpx.put(f"{a.url}/v1/streams/line").is_success else None
    assert a.terminate() in (0, -signal.SIGTERM)
    assert store.stored_seq("line") == 17
    with replica(tiny_model, tmp_path / "b.log", store) as b:
        assert httpx.put(f"{b.url}/v1/streams/line").json()["next_seq"] == 17
        rest = send(b.url, "line", 17, x[17:])
        assert rest.status_code == 200
    np.testing.assert_allclose(first.json()["progress"] + rest.json()["progress"], offline(runtime, x), atol=1e-5)


def test_a_stale_copy_never_answers_and_the_store_only_moves_forward(tiny_model, tmp_path, store, runtime):
    x = frames(np.random.default_rng(33), 30)
    with replica(tiny_model, tmp_path / "a.log", store) as a, replica(tiny_model, tmp_path / "b.log", store) as b:
        httpx.put(f"{a.url}/v1/streams/moving")
        out = send(a.url, "moving", 0, x[:10]).json()["progress"]
        wait_stored(store, "moving", 10)
        # the proxy moves the stream to b, which takes it over and goes on
        assert httpx.put(f"{b.url}/v1/streams/moving").json()["next_seq"] == 10
        out += send(b.url, "moving", 10, x[10:20]).json()["progress"]
        wait_stored(store, "moving", 20)
        # and back to a, whose copy stopped at 10: it catches up from the store instead of answering 409
        back = send(a.url, "moving", 20, x[20:])
        assert back.status_code == 200, back.text
        out += back.json()["progress"]
        wait_stored(store, "moving", 30)
        # a write from a copy behind the store is refused by the store itself
        layout = StreamTable.layout(runtime.hidden_dim, 512)
        stale = RedisStore(store.url, None, runtime.metadata["checkpoint_sha256"], layout, 60)
        rows = {name: np.zeros(items, dtype) for name, (dtype, items) in stale.layout.items()}

        async def write_old() -> int:
            try:
                return await stale.save([StreamState("moving", 5, 0.0, rows)])
            finally:
                await stale.close()

        assert asyncio.run(write_old()) == [FURTHER_ALONG] and store.stored_seq("moving") == 30
    np.testing.assert_allclose(out, offline(runtime, x), atol=1e-5)


def test_redis_going_away_and_back_under_load(tiny_model, tmp_path, store):
    x = frames(np.random.default_rng(34), 200)
    with replica(tiny_model, tmp_path / "a.log", store) as a:
        httpx.put(f"{a.url}/v1/streams/steady")
        seq = 0

        def step() -> None:
            nonlocal seq
            assert send(a.url, "steady", seq, x[seq % 200 : seq % 200 + 1]).status_code == 200
            seq += 1

        for _ in range(10):
            step()
        store.stop()
        deadline = time.monotonic() + 10
        while httpx.get(f"{a.url}/readyz").json()["durability"] != "degraded":
            step()  # the streams held are still served
            assert time.monotonic() < deadline
        assert httpx.get(f"{a.url}/readyz").status_code == 200
        store.start()  # empty: no persistence here
        deadline = time.monotonic() + 20
        while httpx.get(f"{a.url}/readyz").json()["durability"] != "ok":
            step()
            time.sleep(0.05)
            assert time.monotonic() < deadline
        step()
        wait_stored(store, "steady", seq)
        errors = [
            line
            for line in httpx.get(f"{a.url}/metrics").text.splitlines()
            if line.startswith("progress_store_errors_total")
        ]
        assert float(errors[0].split()[-1]) > 0
        assert a.proc.poll() is None


def test_ttl_delete_and_a_state_for_another_model(tiny_model, tmp_path, store):
    with replica(tiny_model, tmp_path / "a.log", store, idle_ttl_s=1) as a:
        httpx.put(f"{a.url}/v1/streams/brief")
        send(a.url, "brief", 0, frames(np.random.default_rng(35), 3))
        wait_stored(store, "brief", 3)
        time.sleep(1.6)
        assert store.stored_seq("brief") is None  # expired with its idle TTL
        assert httpx.get(f"{a.url}/v1/streams/brief").status_code == 404
        httpx.put(f"{a.url}/v1/streams/gone")
        send(a.url, "gone", 0, frames(np.random.default_rng(36), 2))
        wait_stored(store, "gone", 2)
        assert httpx.delete(f"{a.url}/v1/streams/gone").status_code == 204
        assert store.stored_seq("gone") is None
        assert httpx.delete(f"{a.url}/v1/streams/gone").status_code == 404  # nowhere: not here, not stored
        client = redis.Redis(port=store.port)
        client.hset(PREFIX + "alien", mapping={"seq": 50, "model": "another", "window": 512, "created": 0, "blob": b""})
        assert httpx.put(f"{a.url}/v1/streams/alien").json()["next_seq"] == 0  # not restored
        assert store.stored_seq("alien") == 50  # nor overwritten by the new stream's first write


def test_an_unreachable_store_stops_the_start_unless_not_required(tiny_model, tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = serve_once(tiny_model, state_url=url)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr
    assert "unreachable" in errors[0] and url.removeprefix("redis://") in errors[0]
    with ServerProcess(tiny_model, tmp_path / "log", state_url=url, state_required="false") as srv:
        readyz = httpx.get(f"{srv.url}/readyz").json()
        assert readyz == {"ready": True, "durability": "degraded", "unstored_streams": 0}
        assert httpx.put(f"{srv.url}/v1/streams/x").status_code == 503  # cannot tell if it exists elsewhere


def test_a_takeover_keeps_the_streams_rate_and_continues_a_key_stored_before_rates(tiny_model_v1, tmp_path, store):
    from progress_stream.engine.runtime import CellRuntime

    x = frames(np.random.default_rng(36), 10)
    a = replica(tiny_model_v1, tmp_path / "a.log", store, snapshot_interval_s=60).start()  # only the final write
    httpx.put(f"{a.url}/v1/streams/timed", params={"fps": 20})
    first = send(a.url, "timed", 0, x[:6]).json()
    assert a.terminate() in (0, -signal.SIGTERM)
    # the same stream as a server before frame rates stored it: its blob without the arrays added since
    client = redis.Redis(port=store.port)
    stored = client.hgetall(PREFIX + "timed")
    layout = StreamTable.layout(CellRuntime(tiny_model_v1, providers="cpu").hidden_dim, 512)
    before = sum(dtype.itemsize * items for name, (dtype, items) in layout.items() if name not in ADDED_ARRAYS)
    client.hset(PREFIX + "older", mapping={**stored, b"blob": stored[b"blob"][:before]})
    with replica(tiny_model_v1, tmp_path / "b.log", store) as b:
        assert httpx.get(f"{b.url}/v1/streams/timed").json()["fps"] == 20
        rest = send(b.url, "timed", 6, x[6:]).json()
        older = httpx.get(f"{b.url}/v1/streams/older").json()
        resent = send(b.url, "older", 0, x[:6])  # its chunks' digests were another hash: not answered again
        older_rest = send(b.url, "older", 6, x[6:]).json()
    expected = offline_answers(CellRuntime(tiny_model_v1, providers="cpu"), x, fps=20)
    assert_same(Estimates.join([Estimates.read(first), Estimates.read(rest)]), expected)
    assert older["fps"] is None and older["next_seq"] == 6
    assert resent.status_code == 409 and resent.json()["error"]["expected_seq"] == 6
    assert older_rest["remaining_s"] is None and older_rest["progress"] == rest["progress"]
