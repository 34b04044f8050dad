"""CPU cost of the work beside the frame path, per round, for many busy streams (in process).

    .venv/bin/python benchmarks/background_costs.py [--model models/progress_head.onnx]

* the web board: one update of ``/v1/board/events`` (every stream changed since the last one);
* the shared store: one write round to a real ``redis-server`` (Debian's, on a free port).
Each is the median CPU time (``time.process_time``) of 5 rounds, and its share of one core at the
period it runs at (the board's 0.1 s, the store's default 5 s snapshot interval).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from progress_stream.engine.batcher import Batcher
from progress_stream.engine.durability.store import RedisStore
from progress_stream.engine.durability.takeover import SharedStreams
from progress_stream.engine.engine import EngineConfig
from progress_stream.engine.metrics import Metrics
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import OPEN, StreamTable
from progress_stream.server.board import CPU_SHARE, PERIOD_S, Watcher, sse
from progress_stream.server.process import RedisProcess


def busy_table(runtime: CellRuntime, n: int) -> StreamTable:
    table = StreamTable(max(n, 1), runtime.hidden_dim, EngineConfig().retained_window)
    for i in range(n):
        table.create(f"s{i}")
    return table


def advance(table: StreamTable) -> None:
    for stream in table.streams.values():
        stream.done_seq += 1


def board_ms(runtime: CellRuntime, n: int) -> float:
    table = busy_table(runtime, n)
    watcher = Watcher(table, OPEN)
    watcher.update()
    times = []
    for _ in range(5):
        advance(table)
        started = time.process_time()
        sse("update", watcher.update())
        times.append(time.process_time() - started)
    return 1e3 * float(np.median(times))


async def store_ms(runtime: CellRuntime, n: int, url: str) -> float:
    table = busy_table(runtime, n)
    layout = StreamTable.layout(runtime.hidden_dim, table.window)
    store = RedisStore(url, None, "bench", layout, 600)
    shared = SharedStreams(store, table, Batcher(runtime, table, Metrics(), 8), Metrics(), 5.0)
    times = []
    for _ in range(5):
        advance(table)
        started = time.process_time()
        await shared.save()
        times.append(time.process_time() - started)
    await store.close()
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    runtime = CellRuntime(args.model, providers="cpu")
    redis = RedisProcess().start()
    interval = EngineConfig().snapshot_interval_s
    try:
        print("| busy streams | board update ms | board share of a core | store write round ms | store share |")
        print("|---|---|---|---|---|")
        for n in args.streams:
            board, store = board_ms(runtime, n), asyncio.run(store_ms(runtime, n, redis.url))
            board_share = board / 1e3 / max(PERIOD_S, board / 1e3 / CPU_SHARE)  # its period grows
            print(f"| {n} | {board:.2f} | {board_share:.1%} | {store:.1f} | {store / 1e3 / interval:.2%} |")
    finally:
        redis.stop()


if __name__ == "__main__":
    main()
