"""Cluster smoke test without Docker: two replicas and nginx (Debian's package) on 127.0.0.1.

    .venv/bin/python scripts/cluster_smoke.py [--model models/progress_head.onnx] [--streams 200]

1. starts two `progress serve` replicas (each with its own state file) and nginx rendered from
   deploy/nginx/progress.conf.template (consistent hashing on the stream id);
2. streams N streams through the proxy (WebSocket binary, WebSocket JSON and HTTP mixed);
3. checks every stream lives on exactly one replica, the replicas' own metrics add up, and every
   frame's progress equals offline stepping of the cell;
4. stops one replica with SIGTERM, restarts it from its state file, streams the rest of every stream
   through the proxy and checks the continuation equals offline stepping too.
Exits non-zero with a message on the first failed check.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import string
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from progress_stream.client import AsyncStreamSession, WsStreamSession
from progress_stream.engine.runtime import CellRuntime
from progress_stream.server.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "nginx" / "progress.conf.template"
TOLERANCE = 1e-5
#: The same as docker-compose.yml's (a test holds them together): see deploy/nginx/progress.conf.template.
UPSTREAM_PARAMS = "max_fails=0"


class Nginx:
    """nginx in the foreground with a private prefix, config rendered from the deployment template."""

    def __init__(self, workdir: Path, upstreams: list[int]):
        self.port = free_port()
        self.prefix = workdir / "nginx"
        for sub in ("logs", "tmp_body", "tmp_proxy"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
            (self.prefix / sub).chmod(0o777)  # workers drop root privileges when the master is root
        workdir.chmod(0o755)
        self.prefix.chmod(0o755)
        site = string.Template(TEMPLATE.read_text()).safe_substitute(
            PROGRESS_LISTEN=f"127.0.0.1:{self.port}",
            PROGRESS_UPSTREAMS=" ".join(f"server 127.0.0.1:{p} {UPSTREAM_PARAMS};" for p in upstreams),
        )
        (self.prefix / "progress.conf").write_text(site)
        (self.prefix / "nginx.conf").write_text(
            "worker_processes 1;\npid nginx.pid;\nerror_log logs/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n  access_log off;\n  client_body_temp_path tmp_body;\n  proxy_temp_path tmp_proxy;\n"
            "  include progress.conf;\n}\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nginx:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        cmd = [binary, "-p", str(self.prefix), "-c", "nginx.conf", "-g", "daemon off;"]
        subprocess.run([*cmd, "-t"], check=True, capture_output=True)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        for _ in range(100):
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def metric(url: str, name: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def check_exact(runtime: CellRuntime, data: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> float:
    """The largest difference between every stream's served progress and offline stepping; fails past 1e-5."""
    worst = max(float(np.abs(outputs[sid] - runtime.run_action(x)[0]).max()) for sid, x in data.items())
    check(worst <= TOLERANCE, f"outputs differ from offline stepping by {worst:.2e}")
    return worst


def stop_all(nginx: Nginx | None, replicas: list[ServerProcess]) -> None:
    if nginx:
        nginx.stop()
    for r in replicas:
        if r.proc and r.proc.poll() is None:
            r.kill()


async def stream_all(proxy: str, ids: list[str], data: dict[str, np.ndarray], lo: dict, hi: dict) -> dict:
    """Send frames ``lo[id]..hi[id]`` of every stream through the proxy, in chunks, concurrently."""
    rng = np.random.default_rng(0)

    async def one(i: int, sid: str) -> np.ndarray:
        kind = i % 3
        if kind == 2:
            session = await AsyncStreamSession.open(f"http://{proxy}", stream_id=sid)
        else:
            session = await WsStreamSession.open(f"ws://{proxy}", stream_id=sid, binary=kind == 0)
        session.next_seq = lo[sid]
        out, pos = [], lo[sid]
        while pos < hi[sid]:
            n = min(int(rng.integers(1, 9)), hi[sid] - pos)
            out.append(await session.send(data[sid][pos : pos + n]))
            pos += n
        await session.aclose()
        return np.concatenate(out) if out else np.empty(0, np.float32)

    results = await asyncio.gather(*(one(i, sid) for i, sid in enumerate(ids)))
    return dict(zip(ids, results, strict=True))


def run(model: Path, n_streams: int = 200) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="cluster-smoke-"))
    runtime = CellRuntime(model, providers="cpu")
    replicas = [
        ServerProcess(
            model, workdir / f"replica-{k}.log", state_file=workdir / f"replica-{k}.state", snapshot_interval_s=60
        )
        for k in range(2)
    ]
    nginx = None
    try:
        for r in replicas:
            r.start()
        nginx = Nginx(workdir, [r.port for r in replicas]).start()
        proxy = f"127.0.0.1:{nginx.port}"
        rng = np.random.default_rng(1)
        ids = [f"smoke-{i:03d}" for i in range(n_streams)]
        data = {}
        for sid in ids:
            x = rng.standard_normal((int(rng.integers(8, 40)), runtime.embedding_dim)).astype(np.float32)
            data[sid] = x / np.linalg.norm(x, axis=1, keepdims=True)
        half = {sid: len(x) // 2 for sid, x in data.items()}
        first = asyncio.run(stream_all(proxy, ids, data, dict.fromkeys(ids, 0), half))

        owners = {}
        for sid in ids:
            found = [k for k, r in enumerate(replicas) if httpx.get(f"{r.url}/v1/streams/{sid}").status_code == 200]
            check(len(found) == 1, f"stream {sid} is on replicas {found}, expected exactly one")
            owners[sid] = found[0]
        per_replica = [sum(1 for o in owners.values() if o == k) for k in range(2)]
        check(min(per_replica) > 0, f"consistent hashing put every stream on one replica: {per_replica}")
        for k, r in enumerate(replicas):
            active = metric(r.url, "progress_streams_active")
            frames = metric(r.url, "progress_frames_total")
            expected = sum(half[sid] for sid in ids if owners[sid] == k)
            check(active == per_replica[k], f"replica {k} reports {active} streams, routing sent {per_replica[k]}")
            check(frames == expected, f"replica {k} processed {frames} frames, its streams sent {expected}")

        check(replicas[0].terminate() in (0, -15), "replica 0 did not stop cleanly on SIGTERM")
        replicas[0].start()
        restarted = sum(1 for sid in ids if owners[sid] == 0)
        rest = asyncio.run(stream_all(proxy, ids, data, half, {sid: len(x) for sid, x in data.items()}))

        worst = check_exact(runtime, data, {sid: np.concatenate([first[sid], rest[sid]]) for sid in ids})
        return {
            "streams": n_streams,
            "per_replica": per_replica,
            "restarted_replica_streams": restarted,
            "frames": int(sum(len(x) for x in data.values())),
            "max_abs_diff": worst,
        }
    finally:
        stop_all(nginx, replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "progress_head.onnx")
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args()
    summary = run(args.model, args.streams)
    print(f"cluster smoke passed: {summary}")


if __name__ == "__main__":
    main()
