"""Shared fixtures: a tiny GTCC-layout dataset generated on a subset of the real annotations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: The two WebSocket data planes (PROGRESS_WS_PLANE): every WebSocket test runs against both.
PLANES = ("native", "asgi")

REPO = Path(__file__).resolve().parents[1]
REAL_ANNOTATIONS = REPO.parent / "shared" / "data" / "egoprocel.json"


def subset_annotations(path: Path, tasks: int = 2, handles: int = 6) -> Path:
    """A few tasks and handles of the real EgoProceL annotations, written to ``path``."""
    raw = json.loads(REAL_ANNOTATIONS.read_text())
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
    from training.families import FamilyConfig
    from training.synth import synthesize

    root = tmp_path_factory.mktemp("tiny")
    synthesize(subset_annotations(root / "real.json"), root / "data", FamilyConfig(stride=16, dim=16, seed=1))
    return root / "data"


def train_tiny(data: Path, out: Path, **overrides) -> Path:
    """One quick epoch on the tiny set through the real training loop; returns ``best.pt``."""
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(**{"epochs": 1, "hidden_dim": 16, "mlp_dim": 8, "min_segment_len": 1, **overrides})
    train(cfg, data / "annotations.json", data / "features", out)
    return out / "best.pt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tiny_data, tmp_path_factory.mktemp("ckpt"), epochs=2)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported as an ONNX cell."""
    from model_export.onnx_cell import export_checkpoint

    path = tmp_path_factory.mktemp("model") / "cell.onnx"
    export_checkpoint(tiny_checkpoint, path)
    return path
