"""Frames/s of the engine alone (stream table + batcher + cell, no web layer) with many streams.

    .venv/bin/python benchmarks/engine_throughput.py --providers cpu --streams 100 1000 10000

Each stream submits a chunk, awaits it, submits the next (closed loop), all in one process.
Use it to compare execution providers (CPU vs CUDA) at the batch sizes many streams produce.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from progress_stream.engine.engine import Engine, EngineConfig
from progress_stream.engine.runtime import CellRuntime


async def drive(runtime: CellRuntime, streams: int, frames: int, seconds: float, max_batch: int) -> tuple[float, float]:
    config = EngineConfig(
        max_streams=streams,
        max_batch=max_batch,
        max_frames_per_message=frames,
        retained_window=max(frames, 16),
        max_queue_frames=streams * frames + 1,
    )
    engine = Engine(runtime, config)
    await engine.start()
    x = np.random.default_rng(0).standard_normal((frames, runtime.embedding_dim)).astype(np.float32)
    done = 0
    stop = time.perf_counter() + seconds

    async def one(i: int) -> None:
        nonlocal done
        stream, seq = engine.create(f"s{i}")[0], 0
        while time.perf_counter() < stop:
            await engine.submit(stream, seq, x)
            seq += frames
            done += frames

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    elapsed = time.perf_counter() - started
    batches = engine.metrics.batch_size.collect()[0].samples
    count = next(s.value for s in batches if s.name.endswith("_count"))
    total = next(s.value for s in batches if s.name.endswith("_sum"))
    await engine.stop()
    return done / elapsed, total / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--providers", nargs="+", default=["cpu"], help="e.g. cpu cuda")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--frames", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print("| providers | streams | frames/msg | max batch | frames/s | mean rows per call |")
    print("|---|---|---|---|---|---|")
    for providers in args.providers:
        runtime = CellRuntime(args.model, providers=providers)
        for streams in args.streams:
            for frames in args.frames:
                fps, rows = asyncio.run(drive(runtime, streams, frames, args.seconds, args.max_batch))
                print(
                    f"| {','.join(runtime.providers)} | {streams} | {frames} | {args.max_batch} | {fps:,.0f} | "
                    f"{rows:.0f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
