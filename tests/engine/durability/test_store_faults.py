"""The shared store's faults, each met by a real server and a real ``redis-server``: writes the store
refuses, keys it cannot read, deployments sharing one database, many lookups at once, streams kept alive
without new frames, a stop whose state file cannot be written, and temporary files left by a kill."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
import redis

from progress_stream.engine.durability.store import PREFIX
from tests.conftest import frames
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
