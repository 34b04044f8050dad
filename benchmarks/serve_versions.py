"""Two versions of the server side by side in one run: an earlier checkout ("before") and this tree ("after").

    git worktree add /tmp/before <commit>
    .venv/bin/python -m benchmarks.serve_versions --before /tmp/before --before-cli cli.main

Both serve the same model natively, pinned to core 0, with the load generator on core 1; their runs
alternate and the median of ``--repeats`` is reported: frames/s · the server's CPU µs per message · p99 ms.
The earlier checkout runs on this virtual environment's packages, from its own source (``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import uvloop

from benchmarks.serve_throughput import measured_run, median_run
from progress_stream.engine.runtime import CellRuntime
from progress_stream.loadtest.generator import LoadSpec
from progress_stream.server.process import ServerProcess

LOADS = ((100, 1, True), (1000, 1, True), (100, 1, False), (1000, 1, False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier version")
    parser.add_argument("--before-cli", default="progress_stream.cli", help="its CLI module (cli.main before 0.2)")
    parser.add_argument("--model", type=Path, default=Path("models/progress_head.onnx"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    dim = CellRuntime(args.model, providers="cpu").embedding_dim
    os.sched_setaffinity(0, {1})
    logs = Path(tempfile.mkdtemp(prefix="serve-versions-"))
    serve = ["taskset", "-c", "0", sys.executable, "-m"]
    model = args.model.resolve()
    before = ServerProcess(
        model,
        logs / "before.log",
        command=[*serve, args.before_cli, "serve", "--model", str(model)],
        PYTHONPATH=args.before.resolve(),
    )
    after = ServerProcess(
        model, logs / "after.log", command=[*serve, "progress_stream.cli", "serve", "--model", str(model)]
    )
    before.env["PYTHONPATH"] = before.env.pop("PROGRESS_PYTHONPATH")
    versions = {"before": before.start(), "after": after.start()}
    try:
        print("| streams × frames/msg | format | before | after |\n|---|---|---|---|")
        for streams, frames, binary in LOADS:
            runs: dict[str, list] = {name: [] for name in versions}
            for _ in range(args.repeats):
                for name, server in versions.items():
                    spec = LoadSpec(
                        server.ws_url, streams, frames, "ws", binary, duration=args.duration, warmup=2, dim=dim
                    )
                    runs[name].append(uvloop.run(measured_run(server, spec)))
            cells = []
            for name in versions:
                result, cpu_us, _ = median_run(runs[name])
                cells.append(f"{result.frames_per_s:,.0f} · {cpu_us:.1f} · {result.p99_ms:.0f}")
            kind = "binary" if binary else "JSON"
            print(f"| {streams} × {frames} | {kind} | " + " | ".join(cells) + " |", flush=True)
    finally:
        for server in versions.values():
            server.terminate()


if __name__ == "__main__":
    main()
