"""Frames per second of the stepwise ONNX cell vs PyTorch eager vs recomputing the prefix, and the
cell's cost per frame against another recipe's cell of the same input size.

    .venv/bin/python benchmarks/step_throughput.py --model models/progress_head.onnx \
        --checkpoint runs/smooth-s8-default/best.pt --compare-config configs/ensemble.toml

Everything is measured in this one run on this machine's CPU; ratios compare against the PyTorch
eager step at the same batch size and thread setting, and against the compared recipe's cell. A cell's
cost does not depend on its weights, so the compared cell is an untrained head of that recipe's shape.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from progress_stream.engine.runtime import CellRuntime
from progress_stream.export.onnx_cell import export_checkpoint
from progress_stream.training.checkpoint import load_checkpoint, save_checkpoint
from progress_stream.training.config import load_config
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


def step_inputs(runtime: CellRuntime, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step's inputs for ``batch`` rows of ``runtime``'s cell: embeddings, steps and hidden states."""
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((batch, runtime.embedding_dim)).astype(np.float32),
        rng.integers(0, 50, size=batch).astype(np.int64),
        rng.standard_normal((batch, runtime.hidden_dim)).astype(np.float32),
    )


def cell_rates(args: argparse.Namespace, head: ProgressHead, threads: int) -> dict[int, tuple[float, float]]:
    """``{batch: (onnx fps, torch fps)}``; each engine is timed alone so idle thread pools don't interfere."""
    runtime = CellRuntime(args.model, providers="cpu", threads=threads)
    inputs = {b: step_inputs(runtime, b) for b in args.batches}
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


def recipe_cell(config: Path, head: ProgressHead, folder: Path) -> Path:
    """An untrained cell of ``config``'s recipe for ``head``'s input size, exported into ``folder``."""
    cfg = load_config(config)
    other = ProgressHead(head.config["input_dim"], head.config["length_ref"], **cfg.model_kwargs())
    save_checkpoint(folder / "compared.pt", other, cfg, {}, {})
    export_checkpoint(folder / "compared.pt", folder / "compared.onnx")
    return folder / "compared.onnx"


def cost_per_frame(runtime: CellRuntime, batch: int, seconds: float) -> float:
    """µs of one thread per frame of ``runtime``'s cell at ``batch`` rows."""
    inputs = step_inputs(runtime, batch)
    return 1e6 / rate(lambda: runtime.step(*inputs), batch, seconds)


def compare_cells(args: argparse.Namespace, head: ProgressHead) -> None:
    """This cell's cost per frame against the compared recipe's, interleaved and repeated (medians); each cell's
    session is made once, on one thread."""
    with tempfile.TemporaryDirectory() as folder:
        other = recipe_cell(args.compare_config, head, Path(folder))
        mine, theirs = (CellRuntime(model, providers="cpu", threads=1) for model in (args.model, other))
        print(f"\n# Cost per frame, 1 thread: this cell vs {args.compare_config} (median of {args.repeats})\n")
        print(f"| batch | this cell µs/frame | {args.compare_config} µs/frame | this ÷ compared |")
        print("|---|---|---|---|")
        for batch in args.compare_batches:
            costs = [
                (cost_per_frame(mine, batch, args.seconds), cost_per_frame(theirs, batch, args.seconds))
                for _ in range(args.repeats)
            ]
            a, b = np.median(costs, axis=0).tolist()
            print(f"| {batch} | {a:.2f} | {b:.2f} | {a / b:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/progress_head.onnx")
    parser.add_argument("--checkpoint", default="runs/smooth-s8-default/best.pt")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--compare-config", type=Path, help="a recipe (TOML) whose cell's cost to compare against")
    parser.add_argument("--compare-batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    head, _ = load_checkpoint(args.checkpoint)
    if args.compare_config:
        compare_cells(args, head)
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
