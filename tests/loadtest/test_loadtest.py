"""The load generator against real servers: both transports, pacing, reply checks, errors, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import uvloop

from progress_stream.loadtest.generator import (
    LoadSpec,
    LoadTestError,
    Reply,
    check_reply,
    require_loopback,
    run_load,
    with_scheme,
)
from progress_stream.server.process import ServerProcess

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, plane: str):
    with ServerProcess(tiny_model, tmp_path_factory.mktemp("lt") / "server.log", ws_plane=plane) as srv:
        yield srv


def load(url: str, **kw) -> object:
    return uvloop.run(run_load(LoadSpec(url, **{"duration": 1.0, "warmup": 0.2, **kw})))


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_websocket_closed_loop_measures_and_every_reply_checks_out(server, binary):
    r = load(server.ws_url, streams=4, frames_per_message=3, binary=binary)
    assert r.messages > 20 and r.frames == 3 * r.messages and r.frames_per_s == r.frames / r.seconds
    assert r.errors == {} and r.bad_replies == 0
    assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms <= r.max_ms
    assert r.format == ("binary" if binary else "JSON")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_websocket_paced_load_keeps_to_its_rate(server, binary):
    streams, fps, seconds = 5, 40, 1.5
    r = load(server.ws_url, streams=streams, fps=fps, frames_per_message=1, binary=binary, duration=seconds)
    assert r.errors == {} and r.bad_replies == 0
    # every due message is sent (a late schedule would send fewer), and none early (closed loop: thousands)
    assert streams * (seconds * fps - 2) <= r.messages <= streams * (seconds * fps + 1)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_streams_sharing_sockets_keep_to_their_rate_and_every_entry_checks_out(server, binary):
    streams, per_socket, fps, seconds = 7, 3, 40, 1.5  # sockets of 3, 3 and 1 streams
    r = load(
        server.ws_url,
        streams=streams,
        streams_per_socket=per_socket,
        fps=fps,
        frames_per_message=1,
        binary=binary,
        duration=seconds,
    )
    assert r.errors == {} and r.bad_replies == 0 and r.streams_per_socket == per_socket
    sockets, ticks = 3, seconds * fps
    # paced, not closed loop (which sends thousands), and never ahead of the schedule: one message per socket a
    # tick (its first ticks wait for the attach, so the lower bound leaves room for a loaded machine)
    assert sockets * ticks / 2 <= r.messages <= sockets * (ticks + 1)
    assert r.messages <= r.frames <= per_socket * r.messages and r.frames <= streams * (ticks + 1)


def test_gateway_load_needs_the_websocket():
    with pytest.raises(LoadTestError, match="gateway"):
        load("http://127.0.0.1:1", transport="http", binary=False, streams_per_socket=2)


def test_http_paced_load_keeps_to_its_rate(server):
    streams, fps, k, seconds = 3, 20, 2, 1.5
    r = load(
        server.url, transport="http", binary=False, streams=streams, fps=fps, frames_per_message=k, duration=seconds
    )
    assert r.errors == {} and r.bad_replies == 0
    assert 0 < r.messages <= streams * (seconds * fps / k + 1)  # closed loop would send hundreds
    assert r.transport == "http" and r.url.startswith("http://")


def test_refused_requests_are_counted_not_fatal(tiny_model, tmp_path, plane):
    with ServerProcess(tiny_model, tmp_path / "server.log", api_key="sesame", ws_plane=plane) as srv:
        http = load(srv.url, transport="http", binary=False, streams=3, dim=16, duration=0.3, warmup=0)
        ws = load(srv.ws_url, streams=2, dim=16, duration=0.3, warmup=0)
        with pytest.raises(LoadTestError, match="401"):  # the embedding size cannot be asked either
            load(srv.ws_url, streams=1, duration=0.3)
    assert http.errors == {"unauthorized": 3} and http.messages == 0
    assert ws.errors == {"unauthorized": 2} and ws.messages == 0  # the refused handshake's own error code


def test_a_reply_must_answer_its_own_message():
    assert check_reply(10, 3, Reply(seq=10, next_seq=13, count=3))
    assert not check_reply(10, 3, Reply(seq=7, next_seq=13, count=3))
    assert not check_reply(10, 3, Reply(seq=10, next_seq=12, count=3))
    assert not check_reply(10, 3, Reply(seq=10, next_seq=13, count=2))


def test_only_loopback_targets_unless_allowed():
    require_loopback("ws://127.0.0.1:1")
    require_loopback("http://localhost:1")
    with pytest.raises(LoadTestError, match="not a loopback"):
        require_loopback("ws://192.0.2.1:8000")
    with pytest.raises(LoadTestError, match="HTTP bodies are JSON"):
        load("http://127.0.0.1:1", transport="http", binary=True)
    assert with_scheme("ws://h:1/", "http") == "http://h:1" and with_scheme("https://h", "ws") == "wss://h"


def test_cli_prints_the_summary_writes_json_and_refuses_remote(server, tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "progress_stream.cli", "loadtest", "--url", server.ws_url, "--streams", "2", "-k", "2"]
    done = subprocess.run(
        [*cmd, "--duration", "0.5", "--warmup", "0.1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "p95" in done.stdout and "frames/s" in done.stdout
    result = json.loads(out.read_text())
    assert result["messages"] > 0 and result["bad_replies"] == 0 and result["frames_per_message"] == 2
    remote = subprocess.run(
        [sys.executable, "-m", "progress_stream.cli", "loadtest", "--url", "ws://192.0.2.1:8000", "--dim", "16"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert remote.returncode == 2 and "--allow-remote" in remote.stderr


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_stream_the_server_cannot_attach_is_counted_once_and_left_out(tiny_model, tmp_path, binary):
    with ServerProcess(tiny_model, tmp_path / "server.log", max_streams=3) as srv:
        r = load(srv.ws_url, streams=5, streams_per_socket=5, fps=40, frames_per_message=1, binary=binary, duration=1.0)
    assert r.errors == {"too_many_streams": 2} and r.bad_replies == 0
    assert r.messages > 20 and r.frames == 3 * r.messages  # every tick carries the three attached streams


def test_a_server_that_dies_mid_run_is_counted_on_every_socket(tiny_model, tmp_path):
    with ServerProcess(tiny_model, tmp_path / "server.log") as srv:
        threading.Timer(0.6, srv.kill).start()
        r = load(srv.ws_url, streams=4, streams_per_socket=2, fps=40, duration=2.0, warmup=0)
    assert r.errors == {"connection: dropped": 2}
