"""Calibration on validation videos: the band's coverage, and the start and end of the progress.

The head's two quantile outputs give an interval whose coverage is only roughly right (and off where
the head is wrong). Split conformal calibration fixes the coverage: on validation frames, each frame's
score is how far its band's low end must come down, or its high end go up, to hold the truth; an
offset per frames-seen bin and side, set at a quantile of those scores (with the finite-sample
correction), puts the stated share of frames inside on exchangeable data. Offsets per frames-seen bin
keep the coverage even along an action: the first frames of actions are far less predictable than the
later ones.

The band promises its coverage per action length too, and a frames-seen bin mixes the last frames of
the actions that end in it with the early frames of longer ones. Where the content does not tell the
length, the head reads the short ones low and the long ones high, so they leave the band on opposite
sides: the high end's offset is fitted to the actions ending in the bin, the low end's to the longer
ones passing through it, each length of them at the nominal share (:func:`offset_table`).

Fitted on every validation action, the band covers them at the nominal share by construction, so that
says nothing of new videos. :func:`coverage_on_halves` refits it on random halves of the validation
videos and reads each length bin on the other half: how far a bin's coverage strays from one set of
videos to the next, which training reports beside the offsets.

Where the content is weak the head hedges towards the middle: its start reads high and its end low.
Where that bias passes the limits on validation actions, :func:`edge_offsets` moves the progress per
frames-seen bin, at the least cost in OGPE, until it is back inside.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import torch

from progress_stream.training.data import Dataset, ground_truth
from progress_stream.training.evaluate import LENGTH_BINS, bin_name, edge_frames, frame_bins, predict_causal
from progress_stream.training.model import OFFSET_BINS, OFFSET_STEPS, ProgressHead

#: A group of validation frames smaller than this is not fitted on its own (it takes a wider group's offset).
MIN_BIN_FRAMES = 50
#: The least offset a side takes: how far calibration may pull in a quantile that is too wide.
MIN_OFFSET = -0.5
#: Rounds of fitting a bin's two offsets in turn (each side's misses change what the other may allow).
SIDE_ROUNDS = 6
#: The bias :func:`edge_offsets` allows the start (either way) and the end (below the truth) on validation
#: actions: 0.015 inside the product's limits (0.05 and 0.08), the rest left for the gap to new videos.
START_LIMIT = 0.035
END_LIMIT = 0.065
#: The progress offsets tried per bin, and the weight of each unit of bias past a limit against OGPE.
EDGE_STEPS = np.linspace(-0.08, 0.08, 17)
ZERO_STEP = len(EDGE_STEPS) // 2  # the index of offset 0 (the steps are symmetric about it)
EDGE_PENALTY = 20.0
#: Passes of the coordinate search over the bins.
EDGE_PASSES = 3
#: Random halves of the validation videos on which the band is checked (fitted on one, read on the other).
HALF_SPLITS = 40
#: A length bin is checked where a read half holds at least this many of its actions (the median over splits).
MIN_HALF_ACTIONS = 10
#: The spread of a bin's coverage over the splits: these two quantiles (HALF_SPAN, as reports name them).
HALF_QUANTILES = (0.1, 0.9)
HALF_SPAN = "–".join(f"{q:.0%}" for q in HALF_QUANTILES)

#: A calibration: the offset table ``(OFFSET_STEPS, 2)`` from frames' scores, frames seen, action lengths
#: and the coverage (:func:`offset_table` is the one training uses).
Calibrator = Callable[[np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


def band_scores(model: ProgressHead, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's conformity scores ``(frames, 2)`` and its frames-seen count.

    A score is the least offset of that side whose band holds the truth: column 0 for the low end, where
    the truth lies below the progress, column 1 for the high end, where it lies above; −inf on the other.
    """
    answers = predict_causal(model, data, raw=True)
    scores = []
    for p, q, n in zip(answers.progress, answers.band, data.lengths.tolist(), strict=True):
        y = ground_truth(n)
        # the band is [min(lo − c_lo, p), max(hi + c_hi, p)]: below p it needs lo − c_lo ≤ y, above it y ≤ hi + c_hi
        below = np.where(y < p, q[:, 0] - y, -np.inf)
        scores.append(np.stack([below, np.where(y > p, y - q[:, 1], -np.inf)], axis=1))
    return np.concatenate(scores), np.concatenate([np.arange(1, n + 1) for n in data.lengths.tolist()])


def conformal_offset(scores: np.ndarray, coverage: float) -> float:
    """The ``ceil((n + 1) · coverage)``-th smallest score: the split-conformal offset."""
    k = max(1, math.ceil((len(scores) + 1) * coverage))
    finite = np.sort(scores)
    value = finite[min(k, len(finite)) - 1]
    return float(value) if np.isfinite(value) else 0.0


def side_offset(scores: np.ndarray, misses: float) -> float:
    """The least offset (at least MIN_OFFSET) that leaves at most ``misses`` of one side's ``scores`` above
    it; all of them inside where ``misses`` is negative."""
    k = len(scores) - 1 - max(int(misses), 0)
    value = np.partition(scores, k)[k] if k >= 0 else -np.inf
    return max(float(value), MIN_OFFSET)


def bin_mask(values: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """``lo <= values <= hi``; the last bin (ending at OFFSET_STEPS) is open above."""
    return (values >= lo) & ((values <= hi) if hi < OFFSET_STEPS else True)


def covered(scores: np.ndarray, seen: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Whether each frame's truth lies inside the band that the offset ``table`` ``(OFFSET_STEPS, 2)`` gives it."""
    return (scores <= table[np.minimum(seen, OFFSET_STEPS) - 1]).all(axis=1)


def offset_table(
    scores: np.ndarray, seen: np.ndarray, length: np.ndarray, coverage: float, per_length_low: bool = True
) -> np.ndarray:
    """The band's offsets ``(OFFSET_STEPS, 2)`` from every frame's scores, frames-seen count and action length.

    Bin by bin in order, the bin's frames fall in two groups: those of the actions ending in the bin
    (their length range's own frames) and those of longer actions passing through. The high end's offset
    brings the first group to the share that, with the frames of its actions already settled in earlier
    bins, covers those actions at ``coverage``; the low end's brings the second group to ``coverage``.
    Each side's misses count against the other's, so the two are fitted in turn (SIDE_ROUNDS). A bin
    where either group is thin takes the split-conformal offset of all its frames on both sides (of all
    frames where the bin itself is thin).

    The low end brings each length bin of the longer actions (of those with MIN_BIN_FRAMES frames in
    the bin) to ``coverage``, as well as their pool (which holds the thin ones): the longest actions,
    which a head that cannot see the length reads high from their first frames, are a small part of the
    pool and would leave the band below, past what the bins they end in can make up.
    ``per_length_low=False`` fits the pool alone.
    """
    either = scores.max(axis=1)
    table = np.full((OFFSET_STEPS, 2), conformal_offset(either, coverage), dtype=np.float32)
    by_length = [(a, bin_mask(length, a, b or OFFSET_STEPS)) for a, b in LENGTH_BINS] if per_length_low else []
    for lo, hi in OFFSET_BINS:
        in_bin, members = bin_mask(seen, lo, hi), bin_mask(length, lo, hi)
        own, passing = members & in_bin, in_bin & ~members
        if min(own.sum(), passing.sum()) < MIN_BIN_FRAMES:
            if in_bin.sum() >= MIN_BIN_FRAMES:
                table[lo - 1 : hi] = conformal_offset(either[in_bin], coverage)
            continue
        longer = (passing & mask for a, mask in by_length if a > hi)
        groups = [passing, *(g for g in longer if g.sum() >= MIN_BIN_FRAMES)]
        earlier = covered(scores[members], seen[members], table)[seen[members] < lo].sum()
        share = min(max((coverage * members.sum() - earlier) / own.sum(), 0.0), 1.0)
        low, high = table[lo - 1]
        for _ in range(SIDE_ROUNDS):
            high = side_offset(scores[own, 1], (1 - share) * own.sum() - (scores[own, 0] > low).sum())
            low = max(side_offset(scores[g, 0], (1 - coverage) * g.sum() - (scores[g, 1] > high).sum()) for g in groups)
        table[lo - 1 : hi] = low, high
    return table


def calibrate(model: ProgressHead, data: Dataset, coverage: float) -> dict[str, dict]:
    """Set ``model.band_offset`` from ``data`` (validation actions) for ``coverage``; returns the offsets
    of each side per bin (``band_offsets``) and the band's coverage per length bin on held-out halves of
    the videos (``band_halves``, :func:`halves_summary`)."""
    scores, seen = band_scores(model, data)
    table = offset_table(scores, seen, np.repeat(data.lengths, data.lengths), coverage)
    model.band_offset.copy_(torch.from_numpy(table))
    halves = coverage_on_halves(scores, seen, data.lengths, data.videos, coverage)
    return {
        "band_offsets": {"low": _labels(table[:, 0]), "high": _labels(table[:, 1])},
        "band_halves": halves_summary(*halves),
    }


def coverage_on_halves(
    scores: np.ndarray,
    seen: np.ndarray,
    lengths: np.ndarray,
    videos: np.ndarray,
    coverage: float,
    fit: Calibrator = offset_table,
    splits: int = HALF_SPLITS,
    seed: int = 1,
    draw: Callable[[np.random.Generator, np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each length bin's coverage and action count ``(splits, len(LENGTH_BINS))`` on one random half of the
    videos, the band fitted by ``fit`` on the other half (coverage NaN where the half holds none of the bin,
    and everywhere for a single video).

    ``scores`` and ``seen`` are per frame (:func:`band_scores`), ``lengths`` and ``videos`` per action. A
    half holds half the actions, so the spread it shows overstates that of a band fitted on all of them.
    ``draw(rng, handles)``, where given, picks the videos fitted instead of a random half.
    """
    frame_video, frame_length = np.repeat(videos, lengths), np.repeat(lengths, lengths)
    handles = np.unique(videos)
    rng = np.random.default_rng(seed)
    shares = np.full((splits, len(LENGTH_BINS)), np.nan)
    counts = np.zeros((splits, len(LENGTH_BINS)), np.int64)
    if len(handles) < 2:  # one video has no halves: nothing to check
        return shares, counts
    for i in range(splits):
        half = rng.choice(handles, len(handles) // 2, replace=False) if draw is None else draw(rng, handles)
        fitted = np.isin(frame_video, half)
        table = fit(scores[fitted], seen[fitted], frame_length[fitted], coverage)
        inside = covered(scores[~fitted], seen[~fitted], table)
        for j, (_, frames, n) in enumerate(frame_bins(lengths[~np.isin(videos, half)])):
            counts[i, j] = n
            if n:
                shares[i, j] = inside[frames].mean()
    return shares, counts


def halves_summary(shares: np.ndarray, counts: np.ndarray) -> dict[str, dict[str, float]]:
    """Per length bin that a read half holds at least MIN_HALF_ACTIONS of (by the median over the splits):
    those actions, and the median and the HALF_QUANTILES of its coverage over the splits."""
    summary = {}
    for j, (lo, hi) in enumerate(LENGTH_BINS):
        actions = float(np.median(counts[:, j]))
        if actions >= MIN_HALF_ACTIONS:
            low, high = np.nanquantile(shares[:, j], HALF_QUANTILES)
            median = float(np.nanmedian(shares[:, j]))
            summary[bin_name(lo, hi)] = {"actions": actions, "median": median, "low": float(low), "high": float(high)}
    return summary


def describe_halves(halves: dict[str, dict[str, float]]) -> str:
    """One line for the training log: each checked bin's median coverage and spread on held-out halves."""
    if not halves:
        return "band on held-out halves of the validation videos: no length bin holds enough actions to check"
    bins = " · ".join(f"{name} {h['median']:.2f} ({h['low']:.2f}–{h['high']:.2f})" for name, h in halves.items())
    return (
        f"band on held-out halves of the validation videos (median and {HALF_SPAN} over {HALF_SPLITS} splits), "
        f"per action length: {bins}"
    )


def _labels(values: np.ndarray) -> dict[str, float]:
    """A per-step table as one value per frames-seen bin, keyed as the checkpoint's metrics keep it."""
    return {(f"{lo}-{hi}" if hi < OFFSET_STEPS else f"{lo}+"): float(values[lo - 1]) for lo, hi in OFFSET_BINS}


class _EdgeObjective:
    """OGPE plus EDGE_PENALTY × the start's and the end's bias past their limits, for one offset per bin
    (an index into EDGE_STEPS per bin), over every validation frame at once.

    Each bin's share of the OGPE, the start and the end at each step is tabulated once, so a trial costs
    a sum over the bins rather than a pass over the frames: cheap enough to run after every epoch.
    """

    def __init__(self, progress: list[np.ndarray], lengths: np.ndarray, start_limit: float, end_limit: float):
        self.start_limit, self.end_limit = start_limit, end_limit
        n = lengths.astype(np.int64)
        seen = np.concatenate([np.arange(1, k + 1) for k in n.tolist()])
        p = np.concatenate(progress).astype(np.float64)
        truth = np.concatenate([ground_truth(k) for k in n.tolist()]).astype(np.float64)
        bins = np.searchsorted([hi for _, hi in OFFSET_BINS], np.minimum(seen, OFFSET_STEPS))
        edge = np.repeat([edge_frames(k) for k in n.tolist()], n)
        per_action = np.repeat(1.0 / len(n), n.sum())
        w_start = np.where(seen <= edge, per_action / edge, 0.0)
        w_end = np.where(seen > np.repeat(n, n) - edge, per_action / edge, 0.0)
        self.start_true, self.end_true = w_start @ truth, w_end @ truth
        moved = np.clip(p[None, :] + EDGE_STEPS[:, None], 0.0, 1.0)  # (steps, frames)
        flat = (np.arange(len(EDGE_STEPS))[:, None] * len(OFFSET_BINS) + bins[None, :]).ravel()
        shape = (len(EDGE_STEPS), len(OFFSET_BINS))

        def per_bin(values: np.ndarray) -> np.ndarray:
            return np.bincount(flat, values.ravel(), shape[0] * shape[1]).reshape(shape)

        self.ogpe = per_bin(np.abs(moved - truth) * (per_action / np.repeat(n, n)))
        self.start, self.end = per_bin(moved * w_start), per_bin(moved * w_end)
        self.columns = np.arange(len(OFFSET_BINS))

    def excess(self, steps: np.ndarray) -> float:
        """How far past their limits the start's and the end's bias are, together, at offsets ``steps``."""
        start = self.start[steps, self.columns].sum() - self.start_true
        end = self.end[steps, self.columns].sum() - self.end_true
        return max(abs(start) - self.start_limit, 0.0) + max(-end - self.end_limit, 0.0)

    def __call__(self, steps: np.ndarray) -> float:
        return float(self.ogpe[steps, self.columns].sum()) + EDGE_PENALTY * self.excess(steps)


def edge_search(
    progress: list[np.ndarray], lengths: np.ndarray, start_limit: float = START_LIMIT, end_limit: float = END_LIMIT
) -> tuple[np.ndarray, float]:
    """One progress offset per frames-seen bin for answers ``progress``, and the objective they reach.

    Zero where the start's bias is within ``start_limit`` and the end at most ``end_limit`` below the
    truth's; otherwise each bin's offset is searched in turn (EDGE_STEPS, EDGE_PASSES passes) for the
    least OGPE plus EDGE_PENALTY × the bias left past the limits.
    """
    objective = _EdgeObjective(progress, lengths, start_limit, end_limit)
    steps = np.full(len(OFFSET_BINS), ZERO_STEP)
    best = objective(steps)
    if objective.excess(steps) > 0:
        for _ in range(EDGE_PASSES):
            for k, step in itertools.product(range(len(OFFSET_BINS)), range(len(EDGE_STEPS))):
                trial = steps.copy()
                trial[k] = step
                if (score := objective(trial)) < best - 1e-9:
                    best, steps = score, trial
    return EDGE_STEPS[steps], best


def set_edge_offsets(model: ProgressHead, offsets: np.ndarray) -> dict[str, float]:
    """Write one progress offset per frames-seen bin into ``model.progress_offset``; returns them per bin."""
    table = np.concatenate([np.full(hi - lo + 1, v) for (lo, hi), v in zip(OFFSET_BINS, offsets, strict=True)])
    model.progress_offset.copy_(torch.from_numpy(table.astype(np.float32)))
    return _labels(table)


def edge_offsets(
    model: ProgressHead, data: Dataset, start_limit: float = START_LIMIT, end_limit: float = END_LIMIT
) -> dict[str, float]:
    """Set ``model.progress_offset`` from ``data`` (validation actions) by :func:`edge_search`; returns
    the offsets per bin."""
    model.progress_offset.zero_()
    offsets, _ = edge_search(predict_causal(model, data).progress, data.lengths, start_limit, end_limit)
    return set_edge_offsets(model, offsets)
