"""Shared fixtures: a tiny GTCC-layout dataset on a subset of the shipped EgoProceL timings, its model, and
the servers, runtimes and reference answers the tests of every room use."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from progress_stream.contract.cell import remaining_band, remaining_frames
from progress_stream.contract.replies import PER_FRAME, Estimates
from progress_stream.engine.runtime import CellRuntime
from progress_stream.server.process import ServerProcess
from progress_stream.training.data import EGOPROCEL

#: The two WebSocket data planes (PROGRESS_WS_PLANE): every WebSocket test runs against both.
PLANES = ("native", "asgi")

REPO = Path(__file__).resolve().parents[1]
DIM = 16  # the tiny model's embedding size


def subset_annotations(path: Path, tasks: int = 2, handles: int = 6) -> Path:
    """A few tasks and handles of the real EgoProceL annotations, written to ``path``."""
    raw = json.loads(gzip.decompress(EGOPROCEL.read_bytes()))
    keep = {}
    for task in list(raw)[:tasks]:
        entry = raw[task]
        keep[task] = {k: v[:handles] for k, v in entry.items()}
    path.write_text(json.dumps(keep))
    return path


@pytest.fixture(scope="module", params=PLANES)
def plane(request: pytest.FixtureRequest) -> str:
    """Which data plane carries the WebSockets of a test's servers."""
    return request.param


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``annotations.json`` + ``features/`` at stride 16, 16-dim embeddings."""
    from progress_stream.training.families import FamilyConfig
    from progress_stream.training.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(subset_annotations(root / "real.json"), root / "data", FamilyConfig(stride=16, dim=16, seed=1))
    return root / "data"


def train_tiny(data: Path, out: Path, **overrides) -> Path:
    """One quick epoch on the tiny set through the real training loop (no teacher unless asked); returns
    ``best.pt``."""
    from progress_stream.training.config import TrainConfig
    from progress_stream.training.train import train

    base = {"epochs": 1, "hidden_dim": 16, "mlp_dim": 8, "min_segment_len": 1, "teacher_members": 0}
    cfg = TrainConfig(**{**base, **overrides})
    train(cfg, data / "annotations.json", data / "features", out)
    return out / "best.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_data, tmp_path_factory.mktemp("ckpt"), epochs=2)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported as an ONNX cell."""
    from progress_stream.export.onnx_cell import export_checkpoint

    path = tmp_path_factory.mktemp("model") / "cell.onnx"
    export_checkpoint(tiny_checkpoint, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_v1(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny cell as a version 1 cell: the same graph without its ``band`` output."""
    model = onnx.load(tiny_model)
    model.graph.output.remove(next(o for o in model.graph.output if o.name == "band"))
    next(p for p in model.metadata_props if p.key == "format_version").value = "1"
    path = tmp_path_factory.mktemp("model-v1") / "cell-v1.onnx"
    onnx.save(model, path)
    return path


#: The shared server's settings: a small retained window so 'too old' retries are reachable.
SHARED = {"retained_window": 32, "max_frames_per_message": 16, "max_streams": 200}


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shared server (the default, native WebSocket plane)."""
    log = tmp_path_factory.mktemp("srv") / "server.log"
    with ServerProcess(tiny_model, log, **SHARED) as srv:
        yield srv


@pytest.fixture(scope="module")
def ws_server(plane: str, server: ServerProcess, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The shared server's settings on each WebSocket data plane (WebSocket tests run on both)."""
    if plane == "native":
        yield server
        return
    log = tmp_path_factory.mktemp("srv-asgi") / "server.log"
    with ServerProcess(tiny_model, log, ws_plane=plane, **SHARED) as srv:
        yield srv


@pytest.fixture(scope="module")
def runtime(tiny_model: Path) -> CellRuntime:
    return CellRuntime(tiny_model, providers="cpu")


def frames(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def offline(runtime: CellRuntime, x: np.ndarray, resets: tuple[int, ...] = ()) -> np.ndarray:
    """Reference: the runtime stepped alone over each action (a new action at 0 and at every reset)."""
    return offline_answers(runtime, x, resets).progress


def offline_answers(
    runtime: CellRuntime, x: np.ndarray, resets: tuple[int, ...] = (), fps: float | None = None
) -> Estimates:
    """Every answer, offline: each action through ``run_action`` and the cell contract's time to finish, with
    each frame's place in its action (1-based) counted here, and seconds at ``fps``."""
    bounds = [0, *resets, len(x)]
    parts = []
    for a, b in itertools.pairwise(bounds):
        if b > a:
            progress, band = runtime.run_action(x[a:b])
            seen = np.arange(1, b - a + 1)
            left = remaining_frames(progress, seen, band)
            seconds = None if fps is None else left / np.float32(fps)
            parts.append(Estimates(progress, band, left, None if band is None else remaining_band(band, seen), seconds))
    return Estimates.join(parts)


def assert_same(got: Estimates, expected: Estimates) -> None:
    """Every answer bit for bit (a stream alone in its batches steps exactly as the runtime does offline), and
    the same fields absent."""
    for name, a, b in zip(PER_FRAME, got.arrays(), expected.arrays(), strict=True):
        assert (a is None) == (b is None), f"{name}: {a} vs {b}"
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
