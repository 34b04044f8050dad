"""``progress serve`` as a subprocess on a free 127.0.0.1 port: for tests, benchmarks and smoke checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """Start with ``start()``, stop with ``terminate()`` (SIGTERM) or ``kill()`` (SIGKILL)."""

    def __init__(
        self,
        model: Path,
        log: Path,
        command: list[str] | None = None,
        ready_path: str = "/readyz",
        port: int | None = None,
        **settings: object,
    ):
        """``command`` replaces ``progress serve`` (it gets ``--port PORT`` appended)."""
        self.model = model
        self.port = port or free_port()
        self.log = log
        self.command = command or [sys.executable, "-m", "progress_stream.cli", "serve", "--model", str(model)]
        self.ready_path = ready_path
        self.env = {**os.environ, **{f"PROGRESS_{k.upper()}": str(v) for k, v in settings.items()}}
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        if self.proc is not None and self.proc.poll() is None:  # ``with srv.start():`` starts it once
            return self
        cmd = [*self.command, "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready:\n{self.log.read_text()}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.kill()


class RedisProcess:
    """Debian's ``redis-server`` on a free 127.0.0.1 port, no persistence: for tests and smoke checks."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
