"""Operations against real server processes: limits, eviction, API key, metrics, snapshots, crashes."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from progress_stream.client import StreamSession
from progress_stream.server.process import ServerProcess
from tests.conftest import frames, offline


def scrape(url: str) -> dict[str, float]:
    """Every sample of a real Prometheus text scrape, parsed by prometheus-client's own parser."""
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_metrics_scrape_shows_the_counters_moving(server):
    before = scrape(server.url)
    with StreamSession(server.url) as s:
        s.send(frames(np.random.default_rng(0), 5))
    httpx.post(f"{server.url}/v1/streams/nope/frames", json={"seq": 0, "embeddings": [[0.0] * 16]})
    after = scrape(server.url)
    assert after["progress_frames_total"] - before.get("progress_frames_total", 0) == 5
    assert after["progress_batch_size_count"] > before.get("progress_batch_size_count", 0)
    assert after["progress_inference_seconds_count"] > before.get("progress_inference_seconds_count", 0)
    assert after["progress_request_seconds_count{transport=http}"] > before.get(
        "progress_request_seconds_count{transport=http}", 0
    )
    assert after["progress_errors_total{code=stream_not_found}"] >= 1
    assert after["progress_streams_active"] >= 1 and after["progress_queue_frames"] == 0
    assert any(k.startswith("progress_model_info{") and "embedding_dim=16" in k for k in after)


@pytest.fixture(scope="module")
def tight(tiny_model, tmp_path_factory, plane):
    """Few streams, a short idle TTL and a tiny queue (on each WebSocket plane)."""
    log = tmp_path_factory.mktemp("tight") / "server.log"
    with ServerProcess(tiny_model, log, max_streams=3, idle_ttl_s=1.0, max_queue_frames=8, ws_plane=plane) as srv:
        yield srv


def test_stream_limit_answers_503_with_retry_after(tight):
    h = httpx.Client(base_url=tight.url)
    ids = [h.post("/v1/streams", json={}).json()["stream_id"] for _ in range(3)]
    r = h.post("/v1/streams", json={})
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["error"]["code"] == "too_many_streams"
    for sid in ids:
        h.delete(f"/v1/streams/{sid}")


def test_overload_closes_the_websocket_with_1013(tight):
    async def main():
        async with connect(f"{tight.ws_url}/v1/streams/big/ws", compression=None) as ws:
            await ws.send(orjson.dumps({"seq": 0, "embeddings": [[0.1] * 16] * 9}).decode())
            assert orjson.loads(await ws.recv())["error"]["code"] == "overloaded"
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1013

    asyncio.run(main())
    r = httpx.post(f"{tight.url}/v1/streams/big/frames", json={"seq": 0, "embeddings": [[0.1] * 16] * 9})
    assert r.status_code == 503 and "Retry-After" in r.headers
    httpx.delete(f"{tight.url}/v1/streams/big")


def test_idle_streams_are_evicted(tight):
    h = httpx.Client(base_url=tight.url)
    sid = h.post("/v1/streams", json={}).json()["stream_id"]
    before = scrape(tight.url).get("progress_evictions_total", 0)
    assert h.get(f"/v1/streams/{sid}").status_code == 200
    time.sleep(2.5)
    r = h.post(f"/v1/streams/{sid}/frames", json={"seq": 0, "embeddings": [[0.1] * 16]})
    assert r.status_code == 404
    assert scrape(tight.url)["progress_evictions_total"] >= before + 1


def test_api_key_guards_v1_but_not_health_or_metrics(tiny_model, tmp_path, plane):
    with ServerProcess(tiny_model, tmp_path / "log", api_key="s3cret", ws_plane=plane) as srv:
        assert httpx.post(f"{srv.url}/v1/streams", json={}).status_code == 401
        wrong = httpx.post(f"{srv.url}/v1/streams", json={}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
        ok = httpx.post(f"{srv.url}/v1/streams", json={}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 201
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        assert httpx.get(f"{srv.url}/metrics").status_code == 200

        async def ws(headers):
            async with connect(f"{srv.ws_url}/v1/streams/k1/ws", additional_headers=headers) as conn:
                await conn.send(orjson.dumps({"seq": 0, "embeddings": [[0.1] * 16]}).decode())
                return orjson.loads(await conn.recv())

        with pytest.raises(InvalidStatus) as refused:
            asyncio.run(ws({}))
        # the handshake is answered like any /v1 request: 401 and the error body
        assert refused.value.response.status_code == 401
        assert orjson.loads(refused.value.response.body)["error"]["code"] == "unauthorized"
        assert "progress" in asyncio.run(ws({"Authorization": "Bearer s3cret"}))


def test_sigterm_snapshots_and_a_restart_continues_exactly(tiny_model, tmp_path, runtime):
    x = frames(np.random.default_rng(11), 40)
    state = tmp_path / "streams.state"
    srv = ServerProcess(tiny_model, tmp_path / "log", state_file=state, snapshot_interval_s=60).start()
    try:
        with StreamSession(srv.url, stream_id="durable") as s:
            first = [s.send(x[i : i + 5]) for i in range(0, 20, 5)]
        assert srv.terminate() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert state.exists() and "state saved" in (tmp_path / "log").read_text()
        srv.start()
        assert httpx.get(f"{srv.url}/v1/streams/durable").json()["next_seq"] == 20
        with StreamSession(srv.url, stream_id="durable") as s:
            assert s.next_seq == 20
            rest = [s.send(x[i : i + 5]) for i in range(20, 40, 5)]
    finally:
        srv.kill()
    np.testing.assert_allclose(np.concatenate(first + rest), offline(runtime, x), atol=1e-5)


def test_after_kill_9_a_client_replaying_from_expected_seq_matches_an_uninterrupted_run(tiny_model, tmp_path, runtime):
    x = frames(np.random.default_rng(12), 60)
    state = tmp_path / "streams.state"
    srv = ServerProcess(tiny_model, tmp_path / "log", state_file=state, snapshot_interval_s=0.2).start()
    try:
        session = StreamSession(srv.url, stream_id="crashy")
        out = [session.send(x[i : i + 5]) for i in range(0, 20, 5)]
        time.sleep(0.6)  # a snapshot holds these 20 frames
        out += [session.send(x[i : i + 5]) for i in range(20, 30, 5)]
        srv.kill()  # SIGKILL: the last frames were never snapshotted
        srv.start()
        restored = httpx.get(f"{srv.url}/v1/streams/crashy").json()["next_seq"]
        assert 20 <= restored <= 30
        out += [session.send(x[i : i + 5]) for i in range(30, 60, 5)]  # first send gets a 409 and replays
        session.close()
    finally:
        srv.kill()
    np.testing.assert_allclose(np.concatenate(out), offline(runtime, x), atol=1e-5)
