"""Parity of the ONNX cell (onnxruntime, CPU) with the PyTorch full-sequence head, in mixed batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from progress_stream.engine.runtime import CellRuntime
from progress_stream.training.checkpoint import load_checkpoint

TOLERANCE = 1e-5


def random_streams(n: int, dim: int, rng: np.random.Generator, max_len: int = 80) -> list[np.ndarray]:
    """Unit-norm random sequences of lengths 1..max_len."""
    out = []
    for length in rng.integers(1, max_len + 1, size=n):
        x = rng.standard_normal((length, dim)).astype(np.float32)
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def step_mixed_batches(
    runtime: CellRuntime, streams: list[np.ndarray], rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run all streams through the cell together: streams start at random ticks, each tick batches a
    random subset of the live ones (in random order), so every batch mixes rows at different steps."""
    n = len(streams)
    start_tick = rng.integers(0, 20, size=n)
    pos = np.zeros(n, dtype=np.int64)
    state = np.zeros((n, runtime.hidden_dim), np.float32)
    preds = [(np.empty(len(s), np.float32), np.empty((len(s), 2), np.float32)) for s in streams]
    tick = 0
    while (pos < [len(s) for s in streams]).any():
        live = [i for i in range(n) if start_tick[i] <= tick and pos[i] < len(streams[i]) and rng.random() < 0.8]
        tick += 1
        if not live:
            continue
        rows = rng.permutation(live)
        emb = np.stack([streams[i][pos[i]] for i in rows])
        progress, next_state, band = runtime.step(emb, pos[rows].copy(), state[rows])
        for r, i in enumerate(rows):
            preds[i][0][pos[i]] = progress[r]
            preds[i][1][pos[i]] = band[r]
            state[i] = next_state[r]
            pos[i] += 1
    return preds


def verify_export(model: Path, checkpoint: Path, streams: int = 48, seed: int = 0) -> float:
    """Max |onnx − torch| over every frame's progress and band of ``streams`` random sequences."""
    head, _ = load_checkpoint(str(checkpoint))
    runtime = CellRuntime(model, providers="cpu")
    rng = np.random.default_rng(seed)
    seqs = random_streams(streams, runtime.embedding_dim, rng)
    onnx_preds = step_mixed_batches(runtime, seqs, rng)
    worst = 0.0
    with torch.no_grad():
        for seq, pred in zip(seqs, onnx_preds, strict=True):
            progress, band = (t[0].numpy() for t in head(torch.from_numpy(seq).unsqueeze(0), dense=True))
            worst = max(worst, float(np.abs(progress - pred[0]).max()), float(np.abs(band - pred[1]).max()))
    return worst
