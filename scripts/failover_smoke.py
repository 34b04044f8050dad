"""Failover smoke test without Docker: redis-server, three replicas and nginx (Debian's) on 127.0.0.1.

    .venv/bin/python scripts/failover_smoke.py [--model models/progress_head.onnx] [--streams 300]

The replicas share stream state through Redis (``PROGRESS_STATE_URL``); nginx routes by the stream id.
Every stream stays open through three phases (WebSocket binary, WebSocket JSON and HTTP mixed):
1. ``kill -9`` of one replica in mid-stream: nginx moves its streams, the next replica on the ring
   takes each over from Redis, and the clients replay from the ``expected_seq`` of the 409;
2. the killed replica is restarted: its streams come back to it by the hash, and it takes them over
   again (from the newer state the others wrote);
3. a rolling restart (SIGTERM, then start) of all three replicas, one by one, under load.
Every frame's progress must equal offline stepping of the cell (1e-5), and no client may see an error
other than replays. Prints the frames replayed, the takeover stall p50/p99 and the streams moved.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from progress_stream.client import AsyncStreamSession, WsStreamSession
from progress_stream.engine.runtime import CellRuntime
from progress_stream.server.process import RedisProcess, ServerProcess
from scripts.cluster_smoke import Nginx, check, check_exact, metric, stop_all

ROOT = Path(__file__).resolve().parents[1]
REPLICAS = 3


class Streams:
    """Every stream's session, its frames, what came back, and when each answer arrived."""

    def __init__(self, proxy: str, data: dict[str, np.ndarray]):
        self.proxy = proxy
        self.data = data
        self.sessions: dict = {}
        self.out: dict[str, list[np.ndarray]] = {sid: [] for sid in data}
        self.pos = dict.fromkeys(data, 0)
        self.stall: dict[str, float] = dict.fromkeys(data, 0.0)  # longest wait for one answer, this phase
        self.rng = np.random.default_rng(0)

    async def open(self) -> None:
        async def one(i: int, sid: str) -> None:
            if i % 3 == 2:
                self.sessions[sid] = await AsyncStreamSession.open(f"http://{self.proxy}", stream_id=sid)
            else:
                url = f"ws://{self.proxy}"
                self.sessions[sid] = await WsStreamSession.open(url, stream_id=sid, binary=i % 3 == 0)

        await asyncio.gather(*(one(i, sid) for i, sid in enumerate(self.data)))

    async def run(self, until: dict[str, int], pause: float) -> None:
        """Send every stream's frames up to ``until``, in chunks of 1-8, ``pause`` seconds apart."""
        self.stall = dict.fromkeys(self.data, 0.0)

        async def one(sid: str) -> None:
            while self.pos[sid] < until[sid]:
                n = min(int(self.rng.integers(1, 9)), until[sid] - self.pos[sid])
                started = time.monotonic()
                chunk = self.data[sid][self.pos[sid] : self.pos[sid] + n]
                self.out[sid].append(await self.sessions[sid].send(chunk))
                self.stall[sid] = max(self.stall[sid], time.monotonic() - started)
                self.pos[sid] += n
                await asyncio.sleep(pause)

        await asyncio.gather(*(one(sid) for sid in self.data))

    async def reconnect(self) -> None:
        for session in self.sessions.values():
            if isinstance(session, WsStreamSession) and session.conn is not None:
                await session.conn.close()
                session.conn = None

    @property
    def replayed(self) -> int:
        return sum(s.log.replayed for s in self.sessions.values())

    async def close(self) -> None:
        await asyncio.gather(*(s.aclose() for s in self.sessions.values()))


def held(replica: ServerProcess) -> set[str]:
    """The streams a replica holds now (the list never takes a stream over)."""
    page = httpx.get(f"{replica.url}/v1/streams", params={"limit": 1000}).json()
    return {row["stream_id"] for row in page["streams"]}


async def in_thread(function, *args):  # a blocking process call, off the event loop
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


async def phases(streams: Streams, replicas: list[ServerProcess], pause: float) -> dict:
    lengths = {sid: len(x) for sid, x in streams.data.items()}
    third = {sid: n // 3 for sid, n in lengths.items()}
    await streams.open()

    # 1. kill -9 mid-stream
    victim = replicas[0]
    run = asyncio.create_task(streams.run(third, pause))
    await asyncio.sleep(pause * 3)
    moved = held(victim)
    await in_thread(victim.kill)
    await run
    check(len(moved) > 0, "the killed replica held no streams")
    stalls = np.array([streams.stall[sid] for sid in moved])
    replayed_after_kill = streams.replayed

    # 2. restart it: its streams come back by the hash (after nginx's fail_timeout). An HTTP stream does
    # with its next request; a WebSocket stays where it reconnected until it reconnects: here, now.
    await in_thread(victim.start)
    await streams.reconnect()
    await streams.run({sid: 2 * n for sid, n in third.items()}, pause)
    back = held(victim) & moved
    check(len(back) == len(moved), f"{len(moved) - len(back)} of {len(moved)} streams did not come back")

    # 3. rolling restart under load
    async def roll() -> None:
        for replica in replicas:
            await asyncio.sleep(pause * 4)
            await in_thread(replica.terminate)
            await in_thread(replica.start)

    await asyncio.gather(streams.run(lengths, pause), roll())
    await streams.close()
    return {
        "streams_moved": len(moved),
        "takeover_stall_p50_s": round(float(np.percentile(stalls, 50)), 3),
        "takeover_stall_p99_s": round(float(np.percentile(stalls, 99)), 3),
        "frames_replayed_after_kill": replayed_after_kill,
        "frames_replayed_total": streams.replayed,
    }


def run(model: Path, n_streams: int = 300, pause: float = 0.3) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="failover-smoke-"))
    runtime = CellRuntime(model, providers="cpu")
    store = RedisProcess().start()
    replicas = [
        ServerProcess(model, workdir / f"replica-{k}.log", state_url=store.url, snapshot_interval_s=2.0)
        for k in range(REPLICAS)
    ]
    nginx = None
    try:
        for r in replicas:
            r.start()
        nginx = Nginx(workdir, [r.port for r in replicas]).start()
        rng = np.random.default_rng(1)
        data = {}
        for i in range(n_streams):
            x = rng.standard_normal((int(rng.integers(60, 120)), runtime.embedding_dim)).astype(np.float32)
            data[f"fail-{i:03d}"] = x / np.linalg.norm(x, axis=1, keepdims=True)
        streams = Streams(f"127.0.0.1:{nginx.port}", data)
        summary = asyncio.run(phases(streams, replicas, pause))
        worst = check_exact(runtime, data, {sid: np.concatenate(out) for sid, out in streams.out.items()})
        restores = sum(metric(r.url, "progress_store_restores_total") for r in replicas)
        return {
            "streams": n_streams,
            "frames": int(sum(len(x) for x in data.values())),
            **summary,
            "takeovers_after_the_rolling_restart": int(restores),
            "max_abs_diff": worst,
        }
    finally:
        stop_all(nginx, replicas)
        store.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "progress_head.onnx")
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between a stream's chunks")
    args = parser.parse_args()
    print(f"failover smoke passed: {run(args.model, args.streams, args.pause)}")


if __name__ == "__main__":
    main()
