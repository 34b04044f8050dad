"""Causal evaluation: every head and content-free baselines, per-action OGPE and friends."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from progress_stream.contract.cell import remaining_frames
from progress_stream.training.data import Dataset, ground_truth
from progress_stream.training.losses import EDGE_FRACTION
from progress_stream.training.model import ProgressHead
from progress_stream.training.sampling import pad

LENGTH_BINS = ((1, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, None))


def bin_name(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


@dataclass
class Predictions:
    """Causal answers for every action of a dataset: progress ``(L,)`` and band ``(L, 2)`` per action."""

    progress: list[np.ndarray]
    band: list[np.ndarray]


@torch.no_grad()
def predict_causal(model: ProgressHead, data: Dataset, batch_size: int = 64, raw: bool = False) -> Predictions:
    """Progress and band at every frame of every action, using only frames from the action's start to it
    (``raw``: the quantiles before calibration's offset in place of the band, what calibration scores).

    A streamable (or position-free) head is causal in one pass, over actions sorted by length and batched
    ``batch_size`` at a time: a wider batch pads more of its actions up to its longest (256 took three
    times as long as 64 to validate). The ``relative`` head's feature depends on the prefix length, so
    each prefix is recomputed, as its design implies.
    """
    if raw and not model.streamable:
        raise ValueError("raw quantiles are read in one pass, from a streamable head only")
    model.eval()
    device = next(model.parameters()).device
    preds = Predictions(
        [np.empty(0, np.float32)] * len(data.actions), [np.empty((0, 2), np.float32)] * len(data.actions)
    )
    if model.streamable:
        order = np.argsort(data.lengths)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, lengths = pad([data.features[i] for i in idx])
            x, lengths = x.to(device), lengths.to(device)
            outputs = model.answer(x, lengths) if raw else model(x, lengths, dense=True)
            progress, band = (t.cpu().numpy() for t in outputs)
            for row, i in enumerate(idx):
                preds.progress[i] = progress[row, : lengths[row]]
                preds.band[i] = band[row, : lengths[row]]
        return preds
    for i, feats in enumerate(data.features):
        parts = []
        for lo in range(0, len(feats), batch_size):
            ends = range(lo + 1, min(lo + batch_size, len(feats)) + 1)
            x, lengths = pad([feats[:e] for e in ends])
            parts.append([t.cpu().numpy() for t in model(x.to(device), lengths.to(device))])
        preds.progress[i] = np.concatenate([p for p, _ in parts])
        preds.band[i] = np.concatenate([b for _, b in parts])
    return preds


class LengthBayes:
    """Content-free predictor: after t frames, the 1/L-weighted median of t/L over training actions with L ≥ t.

    Weighting each action by 1/L makes every action count once, so this is the best predictor that
    sees only t for the per-action OGPE.
    """

    def __init__(self, train_lengths: np.ndarray):
        lengths = np.sort(np.asarray(train_lengths, dtype=np.float64))[::-1]
        cum_w = np.cumsum(1.0 / lengths)
        t = np.arange(1, int(lengths[0]) + 1)
        count = np.searchsorted(-lengths, -t, side="right")  # actions with L >= t
        idx = np.array([np.searchsorted(cum_w[:k], cum_w[k - 1] / 2.0) for k in count])
        self.table = np.concatenate([[0.0], t / lengths[idx]]).astype(np.float32)

    def __call__(self, length: int) -> np.ndarray:
        t = np.arange(1, length + 1)
        return np.where(t < len(self.table), self.table[np.minimum(t, len(self.table) - 1)], 1.0).astype(np.float32)


class LengthBayesBand:
    """Content-free band: after n frames, the central ``coverage`` interval of n/L over the training actions
    with L ≥ n. No interval from the elapsed time alone does better per frames seen; its coverage per action
    length shows what a band cannot do when the content does not tell the length."""

    def __init__(self, train_lengths: np.ndarray, coverage: float):
        lengths = np.sort(np.asarray(train_lengths, dtype=np.float64))
        tails = (1.0 - coverage) / 2.0
        self.table = np.array(
            [np.quantile(n / lengths[lengths >= n], [tails, 1.0 - tails]) for n in range(1, int(lengths[-1]) + 1)],
            dtype=np.float32,
        )

    def __call__(self, length: int) -> np.ndarray:
        """``(length, 2)``: the band after each frame (the last row past the longest training action)."""
        return self.table[np.minimum(np.arange(length), len(self.table) - 1)]


def baselines(train_lengths: np.ndarray) -> dict[str, Callable[[int], np.ndarray]]:
    """The content-free reference predictors, each a function of an action's length."""
    return {
        "constant_0.5": lambda n: np.full(n, 0.5, dtype=np.float32),
        "length_bayes": LengthBayes(train_lengths),
        "oracle": ground_truth,
    }


def edge_frames(n: int) -> int:
    """How many of an action's ``n`` frames its start (and its end) spans: the loss's edge share, at least one."""
    return max(1, math.ceil(EDGE_FRACTION * n))


def action_errors(preds: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """Each action's mean absolute progress error over its frames: the terms whose mean is OGPE."""
    return np.array([np.abs(p - ground_truth(int(n))).mean() for p, n in zip(preds, lengths, strict=True)])


def progress_metrics(preds: list[np.ndarray], lengths: np.ndarray) -> dict:
    """OGPE (per action, then mean), frame-weighted OGPE, normalised OGPE, start/end means, per-length bins."""
    gts = [ground_truth(int(n)) for n in lengths]
    per_action = action_errors(preds, lengths)
    const = np.array([np.abs(0.5 - g).mean() for g in gts])
    bins = {
        name: {"ogpe": float(per_action[sel].mean()) if sel.any() else None, "n": int(sel.sum())}
        for name, sel in length_bins(lengths).items()
    }
    return {
        "ogpe": float(per_action.mean()),
        "ogpe_frames": float((per_action * lengths).sum() / lengths.sum()),
        "ogpe_normalised": float(1.0 - per_action.mean() / const.mean()),
        "start_mean": float(np.mean([p[: edge_frames(len(p))].mean() for p in preds])),
        "start_true": float(np.mean([g[: edge_frames(len(g))].mean() for g in gts])),
        "end_mean": float(np.mean([p[-edge_frames(len(p)) :].mean() for p in preds])),
        "end_true": float(np.mean([g[-edge_frames(len(g)) :].mean() for g in gts])),
        "n_actions": len(preds),
        "n_frames": int(lengths.sum()),
        "length_bins": bins,
    }


def length_bins(lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Each length bin's selector over ``lengths``."""
    return {
        bin_name(lo, hi): (lengths >= lo) & (lengths <= (hi if hi is not None else np.inf)) for lo, hi in LENGTH_BINS
    }


def frame_bins(lengths: np.ndarray) -> list[tuple[str, np.ndarray, int]]:
    """Each length bin: its name, its selector over the frames of every action (concatenated in order) and
    how many actions it holds."""
    per_frame = length_bins(np.repeat(lengths, lengths))
    return [(name, per_frame[name], int(sel.sum())) for name, sel in length_bins(lengths).items()]


def band_inside(bands: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """Whether each frame's true progress lies in its band, over every action's frames in order."""
    truths = (ground_truth(int(n)) for n in lengths)
    return np.concatenate([(b[:, 0] <= g) & (g <= b[:, 1]) for b, g in zip(bands, truths, strict=True)])


def band_metrics(bands: list[np.ndarray], lengths: np.ndarray) -> dict:
    """Coverage (share of frames whose truth lies in the band) and mean width, over all frames and per length bin."""
    inside_all, width_all = band_inside(bands, lengths), np.concatenate([b[:, 1] - b[:, 0] for b in bands])
    bins = {
        name: {
            "coverage": float(inside_all[sel].mean()) if sel.any() else None,
            "width": float(width_all[sel].mean()) if sel.any() else None,
            "n": n,
        }
        for name, sel, n in frame_bins(lengths)
    }
    return {"coverage": float(inside_all.mean()), "width": float(width_all.mean()), "length_bins": bins}


class RemainingBayes:
    """Content-free time to finish: after n frames, the mean of ``L − n`` over training actions with ``L ≥ n``."""

    def __init__(self, train_lengths: np.ndarray):
        lengths = np.sort(np.asarray(train_lengths, dtype=np.float64))
        suffix = np.cumsum(lengths[::-1])[::-1]  # sum of the lengths from each sorted position on
        n = np.arange(1, int(lengths[-1]) + 1)
        first = np.searchsorted(lengths, n, side="left")  # the actions with L >= n start here
        self.table = (suffix[first] / (len(lengths) - first) - n).astype(np.float32)

    def __call__(self, length: int) -> np.ndarray:
        """The estimate after each of ``length`` frames (0 past the longest training action)."""
        n = np.arange(1, length + 1)
        return np.where(n <= len(self.table), self.table[np.minimum(n, len(self.table)) - 1], 0.0).astype(np.float32)


def remaining_metrics(
    progress: list[np.ndarray], bands: list[np.ndarray], lengths: np.ndarray, train_lengths: np.ndarray
) -> dict:
    """Median absolute error of the time to finish (frames), the head's (from its progress and band, as the
    server answers it) and the content-free estimate's, over all frames and per length bin."""
    bayes = RemainingBayes(train_lengths)
    truth = [np.arange(int(n) - 1, -1, -1, dtype=np.float32) for n in lengths]
    seen = [np.arange(1, int(n) + 1) for n in lengths]
    model = np.concatenate(
        [np.abs(remaining_frames(p, s, b) - t) for p, b, s, t in zip(progress, bands, seen, truth, strict=True)]
    )
    base = np.concatenate([np.abs(bayes(int(n)) - t) for n, t in zip(lengths, truth, strict=True)])
    bins = {
        name: {
            "model": float(np.median(model[sel])) if sel.any() else None,
            "bayes": float(np.median(base[sel])) if sel.any() else None,
            "n": n,
        }
        for name, sel, n in frame_bins(lengths)
    }
    return {"model": float(np.median(model)), "bayes": float(np.median(base)), "length_bins": bins}
