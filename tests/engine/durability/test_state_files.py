"""State files are never lost: a file the server cannot restore stops the start and is left untouched,
or (``discard``) is moved aside; the server never overwrites a file it did not load. Real servers."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from progress_stream.client import StreamSession
from progress_stream.contract.replies import Estimates
from progress_stream.engine.streams import ADDED_ARRAYS
from progress_stream.server.process import ServerProcess, free_port
from tests.conftest import assert_same, frames, offline_answers
from tests.server.test_operations import scrape

STREAMS = 3
SMALL = {"max_frames_per_message": 16}  # a window of 32 must hold one message


@pytest.fixture(scope="module")
def real_snapshot(tiny_model, tmp_path_factory) -> Path:
    """A state file written by a real server (window 32) holding three streams."""
    folder = tmp_path_factory.mktemp("snap")
    state = folder / "streams.state"
    srv = ServerProcess(
        tiny_model, folder / "log", state_file=state, retained_window=32, snapshot_interval_s=60, **SMALL
    )
    srv.start()
    try:
        for i in range(STREAMS):
            with StreamSession(srv.url, stream_id=f"s{i}") as s:
                s.send(frames(np.random.default_rng(i), 4))
        srv.terminate()
    finally:
        srv.kill()
    assert state.exists()
    return state


def serve_once(model: Path, timeout: float = 60, **settings: object) -> subprocess.CompletedProcess:
    """``progress serve`` expected to refuse to start: its exit code and output."""
    env = {**os.environ, **{f"PROGRESS_{k.upper()}": str(v) for k, v in settings.items()}}
    cmd = [sys.executable, "-m", "progress_stream.cli", "serve", "--model", str(model), "--port", str(free_port())]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def assert_refused(res: subprocess.CompletedProcess, path: Path, *words: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: "), last
    for word in words:
        assert word in last, last


def corrupt(kind: str, good: bytes) -> bytes:
    if kind == "empty":
        return b""
    if kind == "truncated":
        return good[: len(good) // 2]
    if kind == "random":
        return np.random.default_rng(0).bytes(len(good))
    flipped = bytearray(good)  # one byte of the stream state's data (the zip's CRC covers it)
    flipped[data_middle(good, "state.npy")] ^= 0x40
    return bytes(flipped)


def data_middle(archive: bytes, member: str) -> int:
    """The offset of the middle byte of ``member``'s data in an uncompressed zip (an ``.npz``)."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(member)
    name_length, extra_length = struct.unpack_from("<HH", archive, info.header_offset + 26)  # the local header's
    return info.header_offset + 30 + name_length + extra_length + info.compress_size // 2


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "one byte flipped"])
def test_a_corrupt_state_file_stops_the_start_and_is_left_untouched(tiny_model, real_snapshot, tmp_path, kind):
    state = tmp_path / "streams.state"
    state.write_bytes(corrupt(kind, real_snapshot.read_bytes()))
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    assert_refused(
        serve_once(tiny_model, state_file=state, retained_window=32, **SMALL), state, "not a readable state file"
    )
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["streams.state"]


def test_a_file_written_with_other_settings_stops_the_start(tiny_model, real_snapshot, tmp_path):
    state = tmp_path / "streams.state"
    state.write_bytes(real_snapshot.read_bytes())
    res = serve_once(tiny_model, state_file=state, retained_window=64, **SMALL)
    assert_refused(res, state, "another configuration", "window 32 (this server: 64)")
    assert state.read_bytes() == real_snapshot.read_bytes()


def test_more_streams_than_the_limit_stops_the_start(tiny_model, real_snapshot, tmp_path):
    state = tmp_path / "streams.state"
    state.write_bytes(real_snapshot.read_bytes())
    res = serve_once(tiny_model, state_file=state, retained_window=32, max_streams=STREAMS - 1, **SMALL)
    assert_refused(res, state, f"holds {STREAMS} streams, max_streams is {STREAMS - 1}")
    assert state.read_bytes() == real_snapshot.read_bytes()


def test_a_state_file_that_cannot_be_written_stops_the_start(tiny_model, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    state = blocker / "streams.state"
    assert_refused(serve_once(tiny_model, state_file=state), state, "cannot write the state file there")


def test_discard_moves_the_file_aside_and_never_overwrites_it(tiny_model, real_snapshot, tmp_path):
    state = tmp_path / "streams.state"
    state.write_bytes(real_snapshot.read_bytes())
    settings = {"state_file": state, "retained_window": 64, "state_on_mismatch": "discard", "snapshot_interval_s": 60}
    settings |= SMALL
    srv = ServerProcess(tiny_model, tmp_path / "log", **settings).start()
    try:
        (aside,) = tmp_path.glob("streams.state.rejected-*")
        assert aside.read_bytes() == real_snapshot.read_bytes()
        assert not state.exists()
        assert httpx.get(f"{srv.url}/v1/streams/s0").status_code == 404  # started empty
        with StreamSession(srv.url, stream_id="fresh") as s:
            s.send(frames(np.random.default_rng(5), 2))
        srv.terminate()
    finally:
        srv.kill()
    assert aside.read_bytes() == real_snapshot.read_bytes()
    assert state.exists() and state.read_bytes() != real_snapshot.read_bytes()  # its own, new snapshot
    assert "moved aside" in (tmp_path / "log").read_text()


def test_the_same_settings_restore_the_file(tiny_model, real_snapshot, tmp_path):
    state = tmp_path / "streams.state"
    state.write_bytes(real_snapshot.read_bytes())
    with ServerProcess(tiny_model, tmp_path / "log", state_file=state, retained_window=32, **SMALL) as srv:
        for i in range(STREAMS):
            assert httpx.get(f"{srv.url}/v1/streams/s{i}").json()["next_seq"] == 4


def test_a_snapshot_that_fails_later_is_counted_and_the_server_keeps_serving(tiny_model, tmp_path):
    folder = tmp_path / "state"
    state = folder / "streams.state"
    server = ServerProcess(tiny_model, tmp_path / "log", state_file=state, snapshot_interval_s=0.2)
    with server as srv, StreamSession(srv.url, stream_id="keeps") as s:
        s.send(frames(np.random.default_rng(1), 2))
        for child in folder.iterdir():
            child.unlink()
        folder.rmdir()
        folder.write_text("the state folder is now a file")  # every later snapshot fails
        deadline = time.monotonic() + 10
        while scrape(srv.url).get("progress_snapshot_failures_total", 0) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert scrape(srv.url)["progress_snapshot_failures_total"] >= 2
        assert len(s.send(frames(np.random.default_rng(2), 2))) == 2
    log = (tmp_path / "log").read_text()
    assert f"snapshot to {state} failed" in log and "Traceback" not in log


def post(url: str, sid: str, seq: int, x: np.ndarray, reset: bool = False) -> httpx.Response:
    return httpx.post(f"{url}/v1/streams/{sid}/frames", json={"seq": seq, "embeddings": x.tolist(), "reset": reset})


def test_a_streams_frame_rate_and_its_full_answers_survive_a_restart(tiny_model, tmp_path, runtime):
    x = frames(np.random.default_rng(6), 12)
    settings = {"state_file": tmp_path / "streams.state", "retained_window": 32, "snapshot_interval_s": 60, **SMALL}
    srv = ServerProcess(tiny_model, tmp_path / "a.log", **settings).start()
    try:
        with StreamSession(srv.url, stream_id="timed", fps=12.5) as s:
            first = s.send(x[:8])
        srv.terminate()  # the final snapshot
    finally:
        srv.kill()
    with ServerProcess(tiny_model, tmp_path / "b.log", **settings) as srv:
        assert httpx.get(f"{srv.url}/v1/streams/timed").json()["fps"] == 12.5
        retry = post(srv.url, "timed", 0, x[:8]).json()  # answered from the restored window
        rest = post(srv.url, "timed", 8, x[8:]).json()
    assert_same(Estimates.read(retry), first)
    assert_same(Estimates.join([first, Estimates.read(rest)]), offline_answers(runtime, x, fps=12.5))


def as_version_3(path: Path) -> None:
    """Rewrite a state file as the servers before frame rates and bands wrote it."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k not in ADDED_ARRAYS}
    meta = json.loads(str(arrays.pop("meta")))
    with open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps({**meta, "version": 3})), **arrays)


def test_a_state_file_from_before_the_band_is_restored_and_continues_exactly(tiny_model_v1, tmp_path):
    from progress_stream.engine.runtime import CellRuntime

    x = frames(np.random.default_rng(7), 14)
    state = tmp_path / "streams.state"
    settings = {"state_file": state, "retained_window": 32, "snapshot_interval_s": 60, **SMALL}
    srv = ServerProcess(tiny_model_v1, tmp_path / "a.log", **settings).start()  # such files came from format-1 cells
    try:
        httpx.put(f"{srv.url}/v1/streams/old")
        post(srv.url, "old", 0, x[:5])
        post(srv.url, "old", 5, x[5:10], reset=True)
        srv.terminate()
    finally:
        srv.kill()
    as_version_3(state)
    with ServerProcess(tiny_model_v1, tmp_path / "b.log", **settings) as srv:
        assert httpx.get(f"{srv.url}/v1/streams/old").json()["fps"] is None
        resent = post(srv.url, "old", 5, x[5:10], reset=True)  # its digest was another hash: not answered again
        rest = post(srv.url, "old", 10, x[10:]).json()
    assert resent.status_code == 409 and resent.json()["error"]["expected_seq"] == 10
    expected = offline_answers(CellRuntime(tiny_model_v1, providers="cpu"), x, (5,))[10:]
    assert_same(Estimates.read(rest), expected)
