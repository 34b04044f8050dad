"""Closed-loop WebSocket load: N streams, each sending one message and awaiting its reply, repeatedly.

Messages are pre-encoded (only the seq changes), so the generator spends its time on the socket,
not on building payloads. Bounded in time: it stops by itself after ``warmup + duration`` seconds.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass

import numpy as np
from websockets.asyncio.client import connect

from service.protocol import REQUEST_HEADER


@dataclass
class LoadResult:
    streams: int
    frames_per_message: int
    binary: bool
    seconds: float
    frames: int
    messages: int
    errors: int
    frames_per_s: float
    p50_ms: float
    p99_ms: float

    def row(self) -> str:
        return json.dumps(asdict(self))


def _payloads(dim: int, frames: int, binary: bool, rng: np.random.Generator):
    x = rng.standard_normal((frames, dim)).astype("<f4")
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if binary:
        body = x.tobytes()
        return lambda seq: REQUEST_HEADER.pack(seq, frames, 0) + body
    emb = json.dumps(x.tolist())
    return lambda seq: f'{{"seq":{seq},"embeddings":{emb}}}'


async def _stream(url: str, headers: dict, make, frames: int, until: float, measure_from: float, stats: dict) -> None:
    async with connect(
        f"{url}/v1/streams/{secrets.token_hex(8)}/ws",
        additional_headers=headers,
        compression=None,
        max_size=None,
        open_timeout=30,
    ) as ws:
        seq = 0
        while (now := time.perf_counter()) < until:
            await ws.send(make(seq))
            reply = await ws.recv()
            done = time.perf_counter()
            if isinstance(reply, str) and '"error"' in reply:
                stats["errors"] += 1
                seq = json.loads(reply)["error"].get("expected_seq", seq)
                continue
            seq += frames
            if now >= measure_from:
                stats["latencies"].append(done - now)
                stats["frames"] += frames


async def run_load(
    url: str,
    streams: int = 100,
    frames_per_message: int = 1,
    binary: bool = True,
    duration: float = 10.0,
    warmup: float = 2.0,
    dim: int = 128,
    api_key: str | None = None,
) -> LoadResult:
    """Drive ``streams`` concurrent WebSocket streams at ``url`` (``ws://host:port``)."""
    make = _payloads(dim, frames_per_message, binary, np.random.default_rng(0))
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    stats = {"frames": 0, "errors": 0, "latencies": []}
    start = time.perf_counter()
    measure_from, until = start + warmup, start + warmup + duration
    await asyncio.gather(
        *(_stream(url, headers, make, frames_per_message, until, measure_from, stats) for _ in range(streams))
    )
    elapsed = min(time.perf_counter(), until) - measure_from
    lat = np.array(stats["latencies"]) * 1e3 if stats["latencies"] else np.array([np.nan])
    return LoadResult(
        streams,
        frames_per_message,
        binary,
        round(elapsed, 2),
        stats["frames"],
        len(stats["latencies"]),
        stats["errors"],
        stats["frames"] / elapsed,
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
    )
