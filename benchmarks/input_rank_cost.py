"""What reading a few projections saves per frame on wide features: the default cell's shape at one input
width, reading every dimension against reading ``input_rank`` learned projections.

    .venv/bin/python benchmarks/input_rank_cost.py --input-dim 2048 --ranks 0 96

A cell's cost does not depend on its weights, so both are untrained heads of the default recipe; they are
timed interleaved on one thread, five times each, and the medians compared against the first rank.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from step_throughput import cost_per_frame

from progress_stream.engine.runtime import CellRuntime
from progress_stream.export.onnx_cell import export_checkpoint
from progress_stream.training.checkpoint import save_checkpoint
from progress_stream.training.config import TrainConfig
from progress_stream.training.model import ProgressHead


def rank_cell(input_dim: int, rank: int, folder: Path) -> CellRuntime:
    """The default recipe's cell at ``input_dim`` with ``input_rank = rank``, on one CPU thread."""
    cfg = TrainConfig(input_rank=rank)
    save_checkpoint(folder / f"rank{rank}.pt", ProgressHead(input_dim, 11.0, **cfg.model_kwargs()), cfg, {}, {})
    export_checkpoint(folder / f"rank{rank}.pt", folder / f"rank{rank}.onnx")
    return CellRuntime(folder / f"rank{rank}.onnx", providers="cpu", threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-dim", type=int, default=2048)
    parser.add_argument("--ranks", type=int, nargs="+", default=[0, 96], help="0: every dimension")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cells = {rank: rank_cell(args.input_dim, rank, Path(folder)) for rank in args.ranks}
        print(f"\n# Cost per frame, 1 thread, {args.input_dim}-d features (median of {args.repeats})\n")
        print("| batch | " + " | ".join(f"rank {r} µs/frame" for r in cells) + f" | ÷ rank {args.ranks[0]} |")
        print("|---|" + "---|" * (len(cells) + 1))
        for batch in args.batches:
            times: dict[int, list[float]] = {rank: [] for rank in cells}
            for _ in range(args.repeats):
                for rank, cell in cells.items():
                    times[rank].append(cost_per_frame(cell, batch, args.seconds))
            medians = [statistics.median(t) for t in times.values()]
            ratios = ", ".join(f"{m / medians[0]:.2f}" for m in medians[1:])
            print(f"| {batch} | " + " | ".join(f"{m:.2f}" for m in medians) + f" | {ratios} |")


if __name__ == "__main__":
    main()
