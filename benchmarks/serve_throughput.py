"""Served throughput beside bare endpoints (same parsers, no inference), all in one run.

    .venv/bin/python benchmarks/serve_throughput.py --model models/progress_head.onnx

For 100 and 1000 concurrent streams, 1 and 16 frames per message, JSON and binary, side by side:
a bare ASGI endpoint (uvicorn + FastAPI) and a bare native one (picows), both with the service's
parsers and reply shapes and no model (``benchmarks/bare_server.py``); the service on its ASGI plane
(``PROGRESS_WS_PLANE=asgi``, the path before the native plane); and the service as shipped (the native
plane). Each: frames/s, the server's CPU µs per message (utime+stime from /proc over the measured
window) and p99 latency; and the most of its core the load generator used, to show that it is not
what saturates. Closed loop: every stream sends its next message when the previous reply arrives. On a
machine with two or more cores the servers run pinned to core 0 and the load generator to core 1
(``--no-pin`` to share them). Optional variants: ``--board``, the shipped server while a live web
board reads its event stream (``curl``, on the load generator's core); ``--store``, a server that
shares its streams through a ``redis-server`` (Debian's, on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import uvloop

from progress_stream.engine.runtime import CellRuntime
from progress_stream.loadtest.generator import LoadResult, LoadSpec, run_load
from progress_stream.server.process import RedisProcess, ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def median_run(runs: list[tuple[LoadResult, float, float]]) -> tuple[LoadResult, float, float]:
    """The run with the median throughput (its latencies and CPU time come with it)."""
    return sorted(runs, key=lambda r: r[0].frames_per_s)[(len(runs) - 1) // 2]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from ``/proc/PID/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def board_reader(server: ServerProcess) -> Iterator[None]:
    """A board connected to ``server`` for the duration: its event stream read and thrown away."""
    reader = subprocess.Popen(["curl", "-sN", f"{server.url}/v1/board/events", "-o", os.devnull])
    try:
        yield
    finally:
        reader.terminate()
        reader.wait()


async def measured_run(server: ServerProcess, spec: LoadSpec) -> tuple[LoadResult, float, float]:
    """The load result, the server's CPU µs per message and the share of its core the load generator
    used, over the measured window."""

    async def cpu() -> tuple[float, float]:
        await asyncio.sleep(spec.warmup)
        server_before, generator_before = cpu_seconds(server.proc.pid), time.process_time()
        await asyncio.sleep(spec.duration)
        return cpu_seconds(server.proc.pid) - server_before, time.process_time() - generator_before

    result, (server_cpu, generator_cpu) = await asyncio.gather(run_load(spec), cpu())
    return result, server_cpu * 1e6 / max(result.messages, 1), generator_cpu / spec.duration


def gateway_table(server: ServerProcess, args: argparse.Namespace, dim: int) -> None:
    """The shipped server with K streams per socket (the gateway, /v1/ws): one tick carries a frame of
    each; the server's CPU per frame and per message."""
    print("\n# the gateway: K streams per socket, one frame of each per message (served, as shipped)\n")
    print("| streams | per socket | format | frames/s | server CPU µs per frame | per message | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for streams in args.streams:
        for per in args.per_socket:
            for binary in (False, True):
                spec = LoadSpec(
                    server.ws_url,
                    streams,
                    1,
                    "ws",
                    binary,
                    duration=args.duration,
                    warmup=args.warmup,
                    dim=dim,
                    streams_per_socket=per,
                )
                runs = [uvloop.run(measured_run(server, spec)) for _ in range(args.repeats)]
                result, per_message, _ = median_run(runs)
                per_frame = per_message * result.messages / max(result.frames, 1)
                fmt = "binary" if binary else "JSON"
                print(
                    f"| {streams} | {per} | {fmt} | {result.frames_per_s:,.0f} | {per_frame:.1f} | {per_message:.0f} "
                    f"| {result.p99_ms:.0f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8870)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the variants' runs; report medians")
    parser.add_argument("--board", action="store_true", help="also measure with a live board connected")
    parser.add_argument("--store", action="store_true", help="also measure a server sharing state through Redis")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="servers core 0, load core 1"
    )
    parser.add_argument(
        "--per-socket", type=int, nargs="*", default=[100], help="gateway rows: streams sharing each socket"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    dim = CellRuntime(args.model, providers="cpu").embedding_dim
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    pin = ["taskset", "-c", "0"] if args.pin and (os.cpu_count() or 1) >= 2 else []
    if pin:
        os.sched_setaffinity(0, {1})
    model, port = Path(args.model), itertools.count(args.port)
    serve_cmd = [*pin, sys.executable, "-m", "progress_stream.cli", "serve", "--model", args.model]

    def bare(plane: str) -> ServerProcess:
        command = [*pin, sys.executable, str(ROOT / "benchmarks" / "bare_server.py"), "--dim", str(dim)]
        return ServerProcess(model, logs / f"bare-{plane}.log", command=[*command, "--plane", plane], port=next(port))

    def served(name: str, **settings: object) -> ServerProcess:
        return ServerProcess(model, logs / f"{name}.log", command=serve_cmd, port=next(port), **settings)

    # (name, server, context while it runs); "served" is the service as shipped (the native plane)
    variants = [
        ("bare ASGI", bare("asgi").start(), contextlib.nullcontext),
        ("bare native", bare("native").start(), contextlib.nullcontext),
        ("served, ASGI plane", served("served-asgi", ws_plane="asgi").start(), contextlib.nullcontext),
        ("served", served("served").start(), contextlib.nullcontext),
    ]
    shipped = variants[-1][1]
    if args.board:
        variants.append(("served + board", shipped, lambda: board_reader(shipped)))
    redis = RedisProcess().start() if args.store else None
    if redis is not None:  # the same server, its streams written to a redis-server (on the load generator's core)
        variants.append(("served + store", served("stored", state_url=redis.url).start(), contextlib.nullcontext))
    try:
        where = "servers on core 0, load generator on core 1" if pin else "unpinned"
        print(f"# WebSocket serving, closed loop, this machine ({os.cpu_count()} cores; {where})")
        print(
            "# each cell: frames/s · server CPU µs per message · p99 ms; last, the most of its core the load "
            "generator used in any of them (under 100 %: the server saturated first)\n"
        )
        print(
            "| streams | frames/msg | format | " + " | ".join(name for name, _, _ in variants) + " | generator core |"
        )
        print("|---|---|---|" + "---|" * (len(variants) + 1))
        for streams in args.streams:
            for frames in args.frames:
                for binary in (False, True):
                    runs: dict[str, list[tuple[LoadResult, float, float]]] = {name: [] for name, _, _ in variants}
                    for _ in range(args.repeats):
                        for name, server, during in variants:
                            spec = LoadSpec(
                                server.ws_url,
                                streams,
                                frames,
                                "ws",
                                binary,
                                duration=args.duration,
                                warmup=args.warmup,
                                dim=dim,
                            )
                            with during():
                                runs[name].append(uvloop.run(measured_run(server, spec)))
                    cells, generator = [], 0.0
                    for name, _, _ in variants:
                        result, server_cpu, generator_share = median_run(runs[name])
                        cells.append(f"{result.frames_per_s:,.0f} · {server_cpu:.1f} · {result.p99_ms:.0f}")
                        generator = max(generator, generator_share)
                    fmt = "binary" if binary else "JSON"
                    print(
                        f"| {streams} | {frames} | {fmt} | " + " | ".join(cells) + f" | {generator:.0%} |", flush=True
                    )
        if args.per_socket:
            gateway_table(shipped, args, dim)
    finally:
        for server in {id(s): s for _, s, _ in variants}.values():
            server.terminate()
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    main()
