"""The one wiring point: a real server opens its model file exactly once (seen by strace, from outside the
process), however many components use it, and serves with it."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from progress_stream.server.process import ServerProcess
from tests.conftest import frames, offline


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (.ci/run installs it)")
def test_the_model_file_is_opened_once(tiny_model: Path, runtime, tmp_path: Path):
    model = tmp_path / "once.onnx"
    shutil.copy(tiny_model, model)
    trace = tmp_path / "open.trace"
    strace = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
    command = [*strace, sys.executable, "-m", "progress_stream.cli", "serve", "--model", str(model)]
    srv = ServerProcess(model, tmp_path / "server.log", command=command, state_file=tmp_path / "streams.state")
    with srv:
        x = frames(np.random.default_rng(0), 5)
        assert httpx.put(f"{srv.url}/v1/streams/once").status_code == 201
        res = httpx.post(f"{srv.url}/v1/streams/once/frames", json={"seq": 0, "embeddings": x.tolist()})
        np.testing.assert_allclose(res.json()["progress"], offline(runtime, x), atol=1e-5)
        assert httpx.get(f"{srv.url}/v1/model").json()["path"] == str(model)
        (server_pid,) = Path(f"/proc/{srv.proc.pid}/task/{srv.proc.pid}/children").read_text().split()
        os.kill(int(server_pid), signal.SIGTERM)  # the server, not strace: a stop as in production
        assert srv.proc.wait(timeout=30) in (0, -signal.SIGTERM)  # strace exits as its tracee did
    opens = [line for line in trace.read_text().splitlines() if str(model) in line and "ENOENT" not in line]
    assert len(opens) == 1, opens
    assert "stopped: every accepted frame processed, state saved" in srv.log.read_text()
