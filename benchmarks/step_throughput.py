"""Frames per second of the stepwise ONNX cell vs PyTorch eager vs recomputing the prefix.

    .venv/bin/python benchmarks/step_throughput.py --model models/progress_head.onnx \
        --checkpoint runs/smooth-s8-default/best.pt

Everything is measured in this one run on this machine's CPU; ratios compare against the PyTorch
eager step at the same batch size and thread setting.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from progress_stream.engine.runtime import CellRuntime
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.model import ProgressHead


def rate(fn: Callable[[], None], frames: int, seconds: float) -> float:
    """Frames per second of ``fn`` (which processes ``frames`` frames) over about ``seconds``."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        fn()
        n += 1
    return n * frames / elapsed


def cell_rates(args: argparse.Namespace, head: ProgressHead, threads: int) -> dict[int, tuple[float, float]]:
    """``{batch: (onnx fps, torch fps)}``; each engine is timed alone so idle thread pools don't interfere."""
    runtime = CellRuntime(args.model, providers="cpu", threads=threads)
    rng = np.random.default_rng(0)
    inputs = {
        b: (
            rng.standard_normal((b, runtime.embedding_dim)).astype(np.float32),
            rng.integers(0, 50, size=b).astype(np.int64),
            rng.standard_normal((b, runtime.hidden_dim)).astype(np.float32),
        )
        for b in args.batches
    }
    onnx_fps = {b: rate(lambda a=a, r=runtime: r.step(*a), b, args.seconds) for b, a in inputs.items()}
    del runtime
    torch.set_num_threads(threads or os.cpu_count() or 1)
    with torch.inference_mode():
        torch_fps = {
            b: rate(lambda a=tuple(map(torch.from_numpy, a)): head.step(*a), b, args.seconds) for b, a in inputs.items()
        }
    return {b: (onnx_fps[b], torch_fps[b]) for b in args.batches}


def recompute_rates(args: argparse.Namespace, config: dict) -> dict[int, float]:
    """Online cost of the ``relative`` head of the same size: at frame t it must re-run the whole prefix.

    Per-frame cost over an action of length L is the mean over t = 1..L of one t-frame forward; for
    long actions it is estimated from 40 evenly spaced t (the cost is linear in t).
    """
    torch.set_num_threads(1)
    head = ProgressHead(**{**config, "position_encoding": "relative"}).eval()
    x = torch.randn(1, max(args.lengths), config["input_dim"])
    out = {}
    with torch.inference_mode():
        for length in args.lengths:
            ts = np.unique(np.linspace(1, length, min(length, 40)).astype(int))
            per_t = [1.0 / rate(lambda t=t: head(x[:, :t]), 1, args.seconds / len(ts)) for t in ts]
            out[length] = 1.0 / float(np.mean(per_t))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--checkpoint", default="runs/smooth-s8-default/best.pt")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    args = parser.parse_args()
    head, _ = load_checkpoint(args.checkpoint)
    cores = os.cpu_count()
    print(f"# ONNX cell ({args.model}) vs PyTorch eager step, CPU, {cores} cores\n")
    print("| threads | batch | ONNX frames/s | PyTorch frames/s | ONNX ÷ PyTorch | ONNX µs/step |")
    print("|---|---|---|---|---|---|")
    single = {}
    for threads, label in ((1, "1"), (0, f"all ({cores})")):
        results = cell_rates(args, head, threads)
        if threads == 1:
            single = results
        for batch, (onnx_fps, torch_fps) in results.items():
            print(
                f"| {label} | {batch} | {onnx_fps:,.0f} | {torch_fps:,.0f} | {onnx_fps / torch_fps:.2f} | "
                f"{batch / onnx_fps * 1e6:.1f} |"
            )
    print("\n# Online per-frame cost: cell step vs recomputing the prefix (relative head), 1 stream, 1 thread\n")
    print("| action length | recompute frames/s | cell frames/s (batch 1) | cell ÷ recompute |")
    print("|---|---|---|---|")
    cell_fps = single[min(single)][0]
    for length, fps in recompute_rates(args, head.config).items():
        print(f"| {length} | {fps:,.0f} | {cell_fps:,.0f} | {cell_fps / fps:.1f} |")


if __name__ == "__main__":
    main()
