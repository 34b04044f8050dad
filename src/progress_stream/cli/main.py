"""The ``progress`` command. Subcommands import their heavy modules lazily (``serve`` never imports torch), and
one whose extra is not installed names it (``needs``)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import ContextDecorator
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    help="progress-stream: online action-progress estimation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Annotations = Annotated[Path, typer.Option(help="GTCC annotation JSON (task -> handles, hdl_*).")]
Features = Annotated[Path, typer.Option(help="Folder of <handle>.npy float32 (T, D) features.")]
Split = Annotated[Path | None, typer.Option(help='Optional {"train": [...], "test": [...]} handle split.')]


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _weights(epochs: list[int]) -> str:
    """Which epochs' weights a trained head holds, as ``progress train`` reports it."""
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"the mean of epochs {', '.join(map(str, epochs))}"


def _fail(exc: Exception) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


#: The top-level modules each extra of pyproject.toml brings that our code imports (directly, or through
#: a package's own lazy import: torch.onnx imports onnxscript, uvicorn imports uvloop and httptools).
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "train": frozenset({"torch", "onnx", "onnxscript", "tqdm", "matplotlib", "optuna"}),
    "serve": frozenset(
        {
            "onnxruntime",
            "fastapi",
            "starlette",
            "uvicorn",
            "uvloop",
            "httptools",
            "pydantic_settings",
            "prometheus_client",
            "redis",
            "picows",
            "swagger_ui_bundle",
        }
    ),
    "loadtest": frozenset({"picows", "uvloop"}),
}
#: What to say after ``pip install 'progress-stream[EXTRA]'`` (serve has a CUDA twin; never install both).
EXTRA_HINTS = {"serve": " (with CUDA: 'progress-stream[serve-gpu]' instead)"}

Command = TypeVar("Command", bound=Callable[..., Any])


class needs(ContextDecorator):
    """Turn an extra that is not installed into one line naming it, exit code 2.

    The bare install is the light client, so most subcommands import modules it does not have; they
    import them lazily, and without this a missing extra surfaces as a ``ModuleNotFoundError`` traceback
    that does not say what to install. Only a missing top-level module of one of ``extras`` is turned
    into the message: our own modules, base dependencies and submodules of an installed package (a
    broken install) still raise.
    """

    def __init__(self, *extras: str):
        unknown = set(extras) - EXTRA_MODULES.keys()
        if unknown:
            raise ValueError(f"unknown extras {sorted(unknown)}")
        self.extras = extras
        self.func: Callable[..., Any] | None = None

    def __call__(self, func: Command) -> Command:
        self.func = func
        return super().__call__(func)

    def command_name(self) -> str:
        """``progress NAME`` as typer registered the decorated function (``app.command("eval")``, or
        typer's own rule for a function name: lower case, ``_`` as ``-``)."""
        for info in app.registered_commands:
            if self.func is not None and getattr(info.callback, "__wrapped__", None) is self.func:
                return f"progress {info.name or self.func.__name__.lower().replace('_', '-')}"
        return "progress"

    def __enter__(self) -> needs:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not isinstance(exc, ModuleNotFoundError):
            return
        extra = next((e for e in self.extras if exc.name in EXTRA_MODULES[e]), None)
        if extra is None:
            return
        install = f"pip install 'progress-stream[{extra}]'{EXTRA_HINTS.get(extra, '')}"
        typer.secho(
            f"error: {self.command_name()!r} needs the [{extra}] extra: {install}", fg=typer.colors.RED, err=True
        )
        raise typer.Exit(2) from None


@app.command()
@needs("train")
def synth(
    out: Annotated[Path, typer.Option(help="Output folder (annotations.json + features/).")],
    annotations: Annotated[
        Path | None, typer.Option(help="GTCC annotation JSON (plain or .gz); default: the EgoProceL timings shipped.")
    ] = None,
    family: Annotated[str, typer.Option(help="Feature family: smooth, substeps, cyclic or shifted.")] = ("smooth"),
    stride: Annotated[int, typer.Option(help="Divide the real timings by this (8: median action ~10 frames).")] = 8,
    dim: int = 128,
    seed: int = 0,
    clean: Annotated[
        bool, typer.Option(help="No style, noise, jitter or distractors; the same timings and phases as without.")
    ] = False,
    draw: Annotated[
        int, typer.Option(help="Another draw of every instance of the same classes (0: the dataset the docs use).")
    ] = 0,
) -> None:
    """Generate synthetic embeddings of one family on real annotation timings (GTCC layout)."""
    from progress_stream.training.data import EGOPROCEL
    from progress_stream.training.families import FamilyConfig
    from progress_stream.training.synth import synthesize

    try:
        summary = synthesize(
            annotations or EGOPROCEL,
            out,
            FamilyConfig(stride=stride, dim=dim, seed=seed, clean=clean, draw=draw),
            family,
        )
    except ValueError as exc:
        raise _fail(exc) from exc
    typer.echo(json.dumps(summary))


@app.command()
@needs("train")
def train(
    annotations: Annotations,
    features: Features,
    out: Annotated[Path, typer.Option(help="Run folder; the best checkpoint goes to OUT/best.pt.")],
    config: Annotated[Path | None, typer.Option(help="TOML config (see configs/).")] = None,
    split: Split = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config key: --set epochs=5")] = None,
    search: Annotated[
        int, typer.Option(min=0, help="Search up to N configs on your validation videos (Optuna); 0: train once.")
    ] = 0,
    search_minutes: Annotated[
        float, typer.Option(min=0.1, help="Time budget of --search (checked between trials).")
    ] = (30.0),
) -> None:
    """Train a ProgressHead (the documented default unless --config or --set say otherwise)."""
    from progress_stream.training.calibration import describe_halves
    from progress_stream.training.config import load_config
    from progress_stream.training.data import DataError
    from progress_stream.training.train import load_training_data
    from progress_stream.training.train import train as run_training

    try:
        cfg = load_config(config, set_)
        if search:
            from progress_stream.training.search import run_search

            data = load_training_data(annotations, features, split, cfg.val_fraction)
            best = run_search(cfg, data, out, search, search_minutes)
            typer.echo(
                f"best of {search} trials: trial {best['trial']}, val OGPE {best['val_ogpe']:.4f} "
                f"({best['ratio_to_bayes']:.2f}× length-Bayes) -> {out / 'best.pt'}, {out / 'config.json'}"
            )
            return
        result = run_training(cfg, annotations, features, out, split)
    except (DataError, ValueError) as exc:
        raise _fail(exc) from exc
    val = result["val"]
    typer.echo(
        f"kept {_weights(result['averaged_epochs'])}: val OGPE {val['ogpe']:.4f}, start {val['start_mean']:.3f}, "
        f"end {val['end_mean']:.3f}; trained in {result['train_seconds']:.1f} s -> {out / 'best.pt'}"
    )
    if result["band_halves"] is not None:
        typer.echo(describe_halves(result["band_halves"]))


@app.command()
@needs("train")
def sweep(
    data: Annotated[list[Path], typer.Option(help="A data folder (annotations.json + features/); repeatable.")],
    out: Annotated[Path, typer.Option(help="Runs and sweep.jsonl go here.")] = Path("reports/sweep"),
    recipe: Annotated[list[str] | None, typer.Option(help="Recipes to run (default: all, and 'default').")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="Parallel runs (one torch thread each when > 1).")] = 1,
) -> None:
    """Train recipes on several feature families; rank them by their worst validation ratio to length-Bayes."""
    from progress_stream.training.sweep import RECIPES, run_sweep, sweep_table

    names = recipe or ["default", *RECIPES]
    unknown = [n for n in names if n != "default" and n not in RECIPES]
    if unknown:
        raise _fail(ValueError(f"unknown recipes {unknown}; known: default, {', '.join(RECIPES)}"))
    typer.echo(sweep_table(run_sweep(data, names, out, jobs)))


@app.command("eval")
@needs("train")
def evaluate(
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint reported as 'model'.")],
    annotations: Annotations,
    features: Features,
    out: Annotated[Path, typer.Option(help="Report folder: report.md, metrics.json, PNG plots.")],
    split: Split = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="More heads in the table: NAME=CHECKPOINT, or NAME=CHECKPOINT@FEATURES (repeatable)."),
    ] = None,
) -> None:
    """Evaluate causally on the test handles, against content-free baselines."""
    from progress_stream.training.checkpoint import CheckpointError
    from progress_stream.training.data import DataError
    from progress_stream.training.report import run_evaluation

    extra, own = {}, {}
    for item in compare or []:
        name, sep, rest = item.partition("=")
        if not sep:
            raise _fail(ValueError(f"--compare {item!r} is not NAME=CHECKPOINT"))
        path, at, folder = rest.partition("@")
        extra[name] = Path(path)
        if at:
            own[name] = Path(folder)
    try:
        table = run_evaluation({"model": checkpoint, **extra}, annotations, features, out, split, own)
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    typer.echo(table)


@app.command()
@needs("train")
def summary(
    reports: Annotated[list[Path], typer.Argument(help="Report folders written by `progress eval`.")],
) -> None:
    """One table across report folders (family × stride): every model's OGPE ÷ length-Bayes, the targets."""
    from progress_stream.training.report import family_summary

    try:
        typer.echo(family_summary(reports))
    except (OSError, KeyError, ValueError) as exc:
        raise _fail(exc) from exc


@app.command()
@needs("train")
def export(
    checkpoint: Annotated[Path, typer.Option(help="A streamable checkpoint, e.g. runs/NAME/best.pt.")],
    out: Annotated[Path, typer.Option(help="Where to write the ONNX cell.")] = Path("models/progress_head.onnx"),
    triton: Annotated[Path | None, typer.Option(help="Also write a Triton model repository here.")] = None,
) -> None:
    """Export a checkpoint as a stepwise ONNX cell (one frame in, hidden state carried in and out)."""
    from progress_stream.export.onnx_cell import ExportError, export_checkpoint
    from progress_stream.training.checkpoint import CheckpointError

    try:
        meta = export_checkpoint(checkpoint, out)
    except (ExportError, CheckpointError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"wrote {out} (D={meta['embedding_dim']}, H={meta['hidden_dim']}, {meta['position_encoding']})")
    if triton is not None:
        from progress_stream.export.triton import write_repository

        typer.echo(f"wrote Triton model repository {write_repository(out, triton)}")


@app.command("verify-export")
@needs("train", "serve")
def verify_export(
    model: Annotated[Path, typer.Argument(help="The exported ONNX cell.")],
    checkpoint: Annotated[Path, typer.Option(help="The checkpoint it was exported from.")],
    streams: int = 48,
    seed: int = 0,
) -> None:
    """Compare the ONNX cell (onnxruntime, CPU, mixed batches) with PyTorch on every frame."""
    from progress_stream.engine.runtime import ModelError
    from progress_stream.export.verify import TOLERANCE
    from progress_stream.export.verify import verify_export as run_verify

    try:
        worst = run_verify(model, checkpoint, streams, seed)
    except ModelError as exc:
        raise _fail(exc) from exc
    typer.echo(f"max |onnx - torch| over {streams} streams: {worst:.3e} (tolerance {TOLERANCE:.0e})")
    if worst > TOLERANCE:
        raise _fail(ValueError(f"parity {worst:.3e} exceeds {TOLERANCE:.0e}"))


@app.command()
def probe(
    data: Annotated[list[Path], typer.Option(help="Dataset folders (annotations.json, features/, phase/).")],
    window: Annotated[int, typer.Option(min=0, help="Neighbouring frames on each side.")] = 4,
) -> None:
    """How much of the content phase each dataset's features carry (per-task linear probe, test R²)."""
    from progress_stream.training.data import DataError
    from progress_stream.training.probe import phase_r2

    for folder in data:
        try:
            typer.echo(f"{folder}\tphase R2 {phase_r2(folder, window):.3f}")
        except (DataError, ValueError, FileNotFoundError) as exc:
            raise _fail(exc) from exc


@app.command("demo-pack")
def demo_pack(
    annotations: Annotated[Path, typer.Option(help="GTCC annotations JSON (its test split is used).")],
    features: Annotated[Path, typer.Option(help="Folder of <handle>.npy features.")],
    out: Annotated[Path, typer.Option(help="Folder to write index.json and the actions to.")] = Path("models/demo"),
    count: Annotated[int, typer.Option(min=1, help="How many held-out actions.")] = 6,
) -> None:
    """Write the web page's demo pack: a few held-out actions with their truth."""
    from progress_stream.training.data import DataError
    from progress_stream.training.demo_pack import write_demo_pack

    try:
        index = write_demo_pack(annotations, features, out, count)
    except (DataError, FileNotFoundError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"wrote {index}")


@app.command()
@needs("serve")
def serve(
    model: Annotated[Path | None, typer.Option(help="ONNX cell (default: PROGRESS_MODEL_PATH or models/).")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: PROGRESS_HOST or 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: PROGRESS_PORT or 8000).")] = None,
    log_level: str = "info",
) -> None:
    """Serve the model over HTTP and WebSocket (every other setting: PROGRESS_* environment variables)."""
    from progress_stream.server.serve import run

    run(model=model, host=host, port=port, log_level=log_level)


@app.command()
@needs("loadtest")
def loadtest(
    url: Annotated[str, typer.Option(help="Server or proxy base URL (ws://, http://: the transport picks).")] = (
        "ws://127.0.0.1:8000"
    ),
    streams: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
    fps: Annotated[float, typer.Option(min=0, help="Frames/s per stream (0: closed loop, as fast as replies).")] = 0,
    frames_per_message: Annotated[int, typer.Option("--frames-per-message", "--frames", "-k", min=1)] = 16,
    streams_per_socket: Annotated[
        int, typer.Option(min=1, max=4096, help="Streams sharing each WebSocket through the gateway (/v1/ws).")
    ] = 1,
    transport: Annotated[str, typer.Option(help="ws or http.")] = "ws",
    binary: Annotated[
        bool | None, typer.Option("--binary/--no-binary", help="WebSocket message format (default: binary).")
    ] = None,
    duration: Annotated[float, typer.Option(min=0.1, max=3600, help="Measured seconds.")] = 10.0,
    warmup: Annotated[float, typer.Option(min=0, max=600, help="Unmeasured seconds first.")] = 3.0,
    dim: Annotated[int | None, typer.Option(help="Embedding size (default: asked from GET /v1/model).")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="PROGRESS_API_KEY")] = None,
    allow_remote: Annotated[bool, typer.Option(help="Allow a target that is not this machine.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the result as JSON here.")] = None,
) -> None:
    """Bounded load test: prints throughput, latency p50/p95/p99/max and errors; checks every reply's seq."""
    import uvloop

    from progress_stream.loadtest.generator import LoadSpec, LoadTestError, run_load

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    if transport not in ("ws", "http"):
        raise _fail(ValueError(f"--transport must be ws or http, not {transport!r}"))
    spec = LoadSpec(
        url=url,
        streams=streams,
        frames_per_message=frames_per_message,
        streams_per_socket=streams_per_socket,
        transport=transport,
        binary=transport == "ws" if binary is None else binary,
        fps=fps,
        duration=duration,
        warmup=warmup,
        dim=dim,
        api_key=api_key,
        allow_remote=allow_remote,
    )
    try:
        result = uvloop.run(run_load(spec))  # uvloop: the generator must outrun the server
    except LoadTestError as exc:
        raise _fail(exc) from exc
    typer.echo(result.summary())
    if json_out is not None:
        json_out.write_text(result.to_json() + "\n")
    if result.bad_replies:
        raise _fail(ValueError(f"{result.bad_replies} replies did not answer their message"))


if __name__ == "__main__":
    app()
