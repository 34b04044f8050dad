"""Shared fixtures: a tiny GTCC-layout dataset on a subset of the shipped EgoProceL timings, its model, and
the servers, runtimes and reference answers the tests of every room use."""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

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
    """One quick epoch on the tiny set through the real training loop; returns ``best.pt``."""
    from progress_stream.training.config import TrainConfig
    from progress_stream.training.train import train

    cfg = TrainConfig(**{"epochs": 1, "hidden_dim": 16, "mlp_dim": 8, "min_segment_len": 1, **overrides})
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


# the tiny model's embedding size


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
    bounds = [0, *resets, len(x)]
    return np.concatenate([runtime.run_action(x[a:b]) for a, b in itertools.pairwise(bounds) if b > a])
