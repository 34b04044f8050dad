"""Raw cell step per execution provider (no engine, no web): µs per call and frames/s by batch size.

    .venv/bin/python benchmarks/cell_providers.py --providers cuda cpu --batches 1 1024 16384

Needs only onnxruntime (no torch): this is what was run on the lent GPU machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from progress_stream.engine.runtime import CellRuntime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--providers", nargs="+", default=["cpu"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024, 4096, 16384])
    parser.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: all cores)")
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    print("| providers | batch | µs per call | frames/s |\n|---|---|---|---|")
    rng = np.random.default_rng(0)
    for providers in args.providers:
        rt = CellRuntime(args.model, providers=providers, threads=args.threads)
        for batch in args.batches:
            emb = rng.standard_normal((batch, rt.embedding_dim)).astype(np.float32)
            step = np.full(batch, 3, np.int64)
            state = rng.standard_normal((batch, rt.hidden_dim)).astype(np.float32)
            for _ in range(20):
                rt.step(emb, step, state)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                rt.step(emb, step, state)
                calls += 1
            per_call = (time.perf_counter() - start) / calls
            print(f"| {','.join(rt.providers)} | {batch} | {per_call * 1e6:,.0f} | {batch / per_call:,.0f} |")


if __name__ == "__main__":
    main()
