"""How much of the content phase a family's features carry: a per-task linear probe.

For each task, a ridge regression from a window of ``2k+1`` standardised frames to the frame's
content phase is fitted on the training videos and scored (R², clipped predictions) on the test
videos. A family whose features carry little of the phase cannot be expected to reach the targets
that families with rich features do; this is the number the docs give for it (Training).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from progress_stream.training.data import load_annotations, load_dataset, split_handles

RIDGE = 30.0


def stacked_windows(x: np.ndarray, k: int) -> np.ndarray:
    """Each frame with its ``k`` neighbours on each side (edges repeated): ``(T, (2k+1)·D)``."""
    padded = np.pad(x, ((k, k), (0, 0)), mode="edge")
    return np.concatenate([padded[i : i + len(x)] for i in range(2 * k + 1)], axis=1)


def phase_r2(data: Path, window: int = 4, split: Path | None = None) -> float:
    """Test-video R² of the per-task probe on the dataset at ``data`` (annotations, features/, phase/)."""
    videos = load_annotations(data / "annotations.json")
    handles = split_handles(videos, split)
    tasks = json.loads((data / "annotations.json").read_text())
    sse = sst = 0.0
    for entry in tasks.values():
        mine = set(entry["handles"])
        train = [h for h in handles["train"] if h in mine]
        test = [h for h in handles["test"] if h in mine]
        if len(train) < 2 or not test:
            continue
        (x_fit, y_fit), (x_test, y_test) = (_xy(videos, data, h, window) for h in (train, test))
        mean, scale = x_fit.mean(0), x_fit.std(0) + 1e-6
        x_fit, x_test = (x_fit - mean) / scale, (x_test - mean) / scale
        gram = x_fit.T @ x_fit + RIDGE * np.eye(x_fit.shape[1])
        weights = np.linalg.solve(gram, x_fit.T @ (y_fit - y_fit.mean()))
        predicted = np.clip(x_test @ weights + y_fit.mean(), 0.0, 1.0)
        sse += float(((predicted - y_test) ** 2).sum())
        sst += float(((y_test - y_test.mean()) ** 2).sum())
    if sst == 0:
        raise ValueError(f"{data}: no task has both training and test videos")
    return 1.0 - sse / sst


def _xy(videos: list, data: Path, handles: list[str], window: int) -> tuple[np.ndarray, np.ndarray]:
    features = load_dataset(videos, data / "features", handles)
    phase = load_dataset(videos, data / "phase", handles)
    x = np.concatenate([stacked_windows(f.astype(np.float64), window) for f in features.features])
    return x, np.concatenate([p[:, 0] for p in phase.features])
