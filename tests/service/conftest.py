from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from service.process import ServerProcess
from service.runtime import CellRuntime

DIM = 16  # the tiny model's embedding size


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
