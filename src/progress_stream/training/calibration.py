"""Conformal calibration of the band on validation videos.

The head's two quantile outputs give an interval whose coverage is only roughly right (and off where
the head is wrong). Split conformal calibration fixes the coverage: on validation frames, each frame's
score is the offset the interval needs to hold the truth; the offset of a frames-seen bin is the
``coverage`` quantile of its frames' scores (with the finite-sample correction), so that share of
frames lies inside on exchangeable data. One offset per frames-seen bin keeps the coverage even along
an action: the first frames of actions are far less predictable than the later ones.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from progress_stream.training.data import Dataset, ground_truth
from progress_stream.training.evaluate import predict_causal
from progress_stream.training.model import OFFSET_BINS, OFFSET_STEPS, ProgressHead

#: A bin with fewer validation frames than this takes the offset of all frames together.
MIN_BIN_FRAMES = 50


def band_scores(model: ProgressHead, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's conformity score (the least offset whose band holds the truth) and its frames-seen count."""
    answers = predict_causal(model, data, raw=True)
    scores = []
    for p, q, n in zip(answers.progress, answers.band, data.lengths.tolist(), strict=True):
        y = ground_truth(n)
        # the band is [min(lo − c, p), max(hi + c, p)]: below p it needs lo − c ≤ y, above it y ≤ hi + c
        scores.append(np.where(y < p, q[:, 0] - y, np.where(y > p, y - q[:, 1], -np.inf)))
    return np.concatenate(scores), np.concatenate([np.arange(1, n + 1) for n in data.lengths.tolist()])


def conformal_offset(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) · coverage)``-th smallest score: the split-conformal offset."""
    k = math.ceil((len(scores) + 1) * coverage)
    finite = np.sort(scores)
    value = finite[min(k, len(finite)) - 1]
    return float(value) if np.isfinite(value) else 0.0


def calibrate(model: ProgressHead, data: Dataset, coverage: float) -> dict[str, float]:
    """Set ``model.band_offset`` from ``data`` (validation actions) for ``coverage``; returns the offsets."""
    scores, seen = band_scores(model, data)
    pooled = conformal_offset(scores, coverage)
    table = np.full(OFFSET_STEPS, pooled, dtype=np.float32)
    offsets = {}
    for lo, hi in OFFSET_BINS:
        sel = (seen >= lo) & (seen <= hi) if hi < OFFSET_STEPS else seen >= lo
        value = conformal_offset(scores[sel], coverage) if sel.sum() >= MIN_BIN_FRAMES else pooled
        table[lo - 1 : hi] = value
        offsets[f"{lo}-{hi}" if hi < OFFSET_STEPS else f"{lo}+"] = value
    model.band_offset.copy_(torch.from_numpy(table))
    return offsets
