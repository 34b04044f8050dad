"""Served throughput vs a bare endpoint (same server settings and parsers, no inference), in one run.

    .venv/bin/python benchmarks/serve_throughput.py --model models/progress_head.onnx

For 100 and 1000 concurrent streams, 1 and 16 frames per message, JSON and binary: frames/s,
p50/p99 message latency of each, the served/bare ratio, and each server's CPU time per message
(utime+stime from /proc over the measured window). Closed loop: every stream sends its
next message when the previous reply arrives. On a machine with two or more cores the servers run
pinned to core 0 and the load generator to core 1 (``--no-pin`` to share them). Optional variants,
each with its cost against the plain served runs: ``--board``, the served server while a live web
board reads its event stream (``curl``, on the load generator's core); ``--store``, a server that
shares its streams through a ``redis-server`` (Debian's, on a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from client.loadtest import LoadResult, LoadSpec, run_load
from service.process import RedisProcess, ServerProcess
from service.runtime import CellRuntime

ROOT = Path(__file__).resolve().parents[1]


def median_run(runs: list[tuple[LoadResult, float]]) -> tuple[LoadResult, float]:
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


async def measured_run(server: ServerProcess, spec: LoadSpec) -> tuple[LoadResult, float]:
    """The load result and the server's CPU µs per message over the same measured window."""

    async def server_cpu() -> float:
        await asyncio.sleep(spec.warmup)
        before = cpu_seconds(server.proc.pid)
        await asyncio.sleep(spec.duration)
        return cpu_seconds(server.proc.pid) - before

    result, cpu = await asyncio.gather(run_load(spec), server_cpu())
    return result, cpu / max(result.messages, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--port", type=int, default=8870)
    parser.add_argument("--repeats", type=int, default=2, help="alternate bare/served runs; report medians")
    parser.add_argument("--board", action="store_true", help="also measure with a live board connected")
    parser.add_argument("--store", action="store_true", help="also measure a server sharing state through Redis")
    parser.add_argument(
        "--pin", action=argparse.BooleanOptionalAction, default=True, help="servers core 0, load core 1"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    dim = CellRuntime(args.model, providers="cpu").embedding_dim
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    pin = ["taskset", "-c", "0"] if args.pin and (os.cpu_count() or 1) >= 2 else []
    if pin:
        os.sched_setaffinity(0, {1})
    serve_cmd = [*pin, sys.executable, "-m", "cli.main", "serve", "--model", args.model]
    model = Path(args.model)
    served = ServerProcess(model, logs / "served.log", command=serve_cmd, port=args.port).start()
    bare_cmd = [*pin, sys.executable, str(ROOT / "benchmarks" / "bare_server.py"), "--dim", str(dim)]
    bare = ServerProcess(model, logs / "bare.log", command=bare_cmd, ready_path="/docs", port=args.port + 1).start()
    servers, extras = [served, bare], []  # extras: (name, server, context while it runs)
    if args.board:
        extras.append(("board", served, lambda: board_reader(served)))
    if args.store:  # the same server, its streams written to a redis-server (on the load generator's core)
        redis = RedisProcess().start()
        stored = ServerProcess(
            model, logs / "stored.log", command=serve_cmd, port=args.port + 2, state_url=redis.url
        ).start()
        servers.append(stored)
        extras.append(("store", stored, contextlib.nullcontext))
    try:
        where = "servers on core 0, load generator on core 1" if pin else "unpinned"
        print(f"# WebSocket serving, closed loop, this machine ({os.cpu_count()} cores; {where})\n")
        variants = [("bare", bare, contextlib.nullcontext), ("served", served, contextlib.nullcontext), *extras]
        extra_head = "".join(f" served + {n} frames/s | {n} cost | {n} CPU µs/msg |" for n, _, _ in extras)
        print(
            "| streams | frames/msg | format | bare frames/s | served frames/s | served ÷ bare | "
            "bare p50/p99 ms | served p50/p99 ms | server CPU µs/msg bare / served |" + extra_head
        )
        print("|---|---|---|---|---|---|---|---|---|" + "---|---|---|" * len(extras))
        for streams in args.streams:
            for frames in args.frames:
                for binary in (False, True):
                    runs: dict[str, list[tuple[LoadResult, float]]] = {name: [] for name, _, _ in variants}
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
                                runs[name].append(asyncio.run(measured_run(server, spec)))
                    (b, b_cpu), (s, s_cpu) = median_run(runs["bare"]), median_run(runs["served"])
                    cells = ""
                    for name, _, _ in extras:
                        w, w_cpu = median_run(runs[name])
                        cells += f" {w.frames_per_s:,.0f} | {1 - w.frames_per_s / s.frames_per_s:+.1%} | {w_cpu:.1f} |"
                    print(
                        f"| {streams} | {frames} | {'binary' if binary else 'JSON'} | {b.frames_per_s:,.0f} | "
                        f"{s.frames_per_s:,.0f} | {s.frames_per_s / b.frames_per_s:.2f} | "
                        f"{b.p50_ms:.1f} / {b.p99_ms:.1f} | {s.p50_ms:.1f} / {s.p99_ms:.1f} | "
                        f"{b_cpu:.1f} / {s_cpu:.1f} |" + cells,
                        flush=True,
                    )
    finally:
        for server in servers:
            server.terminate()
        if args.store:
            redis.stop()


if __name__ == "__main__":
    main()
