"""What one scale per frames-seen range on the time to finish would buy, and what it would cost.

    .venv/bin/python benchmarks/remaining_scale.py --checkpoint runs/shifted-s8-default/best.pt \
        --annotations data/shifted-s8/annotations.json --features data/shifted-s8/features [--split S.json]

The time to finish is read from the progress, n·(1 − q)/q after n frames, q the progress leaning a
quarter of the way to the band's low end (``benchmarks/remaining_lean.py``). Where the content says little
about an action's length it falls behind the content-free estimate on the longest actions. Frames seen
past 50 belong to long actions only, so one scale per frames-seen range (the band's offset ranges) could
move those without touching the shorter ones. Here the scales are fitted on the checkpoint's validation
videos, as calibration would fit them: "per range" minimises each range's median absolute error; "every
length ahead by M" minimises the overall one while holding every length bin's median error at most M ×
the content-free estimate's on validation. For each, it prints the median absolute error in frames on the
test videos, overall and per length bin (bins with at least MIN_BIN_ACTIONS actions), with the
content-free estimate's in brackets.
"""

from __future__ import annotations

import argparse

import numpy as np
from checkpoint_args import checkpoint_parser

from progress_stream.contract.cell import LOW_END_WEIGHT, remaining_frames
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.data import Dataset, action_lengths, load_annotations, load_dataset, split_handles
from progress_stream.training.evaluate import RemainingBayes, frame_bins, predict_causal
from progress_stream.training.model import OFFSET_BINS, OFFSET_STEPS, ProgressHead
from progress_stream.training.report import MIN_BIN_ACTIONS
from progress_stream.training.train import load_training_data

#: The scales tried per frames-seen range: e^-1 … e^1.
SCALES = np.exp(np.linspace(-1.0, 1.0, 81))
#: Coordinate-search passes over the ranges, and the weight of each frame of excess error per length bin.
PASSES, PENALTY = 4, 10.0
#: Validation length bins with fewer actions than this are not held to the margin (too few to read).
MIN_VAL_ACTIONS = 10


class Frames:
    """Every frame of a dataset's actions: the head's time to finish, the truth, the content-free estimate,
    and the frames-seen range of each (an index into OFFSET_BINS)."""

    def __init__(self, model: ProgressHead, data: Dataset, content_free: RemainingBayes):
        self.lengths = data.lengths
        self.seen = seen = np.concatenate([np.arange(1, n + 1) for n in self.lengths.tolist()])
        answers = predict_causal(model, data)
        self.progress, self.band = np.concatenate(answers.progress), np.concatenate(answers.band)
        self.estimate = self.leaning(LOW_END_WEIGHT)
        self.truth = (np.repeat(self.lengths, self.lengths) - seen).astype(np.float64)
        self.content_free = np.concatenate([content_free(int(n)) for n in self.lengths]).astype(np.float64)
        self.range = np.searchsorted([hi for _, hi in OFFSET_BINS], np.minimum(seen, OFFSET_STEPS))

    def leaning(self, weight: float) -> np.ndarray:
        """The time to finish with the progress ``weight`` of the way to the band's low end."""
        return remaining_frames(self.progress, self.seen, self.band, weight).astype(np.float64)

    def errors(self, scales: np.ndarray) -> np.ndarray:
        return np.abs(self.estimate * scales[self.range] - self.truth)

    def bins(self, min_actions: int) -> list[tuple[str, np.ndarray]]:
        return [(name, sel) for name, sel, n in frame_bins(self.lengths) if n >= min_actions]


def validation_and_test(args: argparse.Namespace) -> tuple[Frames, Frames]:
    """The checkpoint's validation frames (content-free estimate from its fit actions) and test frames (from
    the training actions), as training and ``progress eval`` split them."""
    model, meta = load_checkpoint(args.checkpoint)
    training = load_training_data(args.annotations, args.features, args.split, meta.train_config.val_fraction)
    videos = load_annotations(args.annotations)
    handles = split_handles(videos, args.split)
    val = Frames(model, training.val, RemainingBayes(training.fit.lengths))
    test = Frames(
        model,
        load_dataset(videos, args.features, handles["test"]),
        RemainingBayes(action_lengths(videos, handles["train"])),
    )
    return val, test


def per_range(val: Frames) -> np.ndarray:
    """Each range's scale minimising its own validation frames' median error."""
    scales = np.ones(len(OFFSET_BINS))
    for k in range(len(OFFSET_BINS)):
        sel = val.range == k
        if sel.any():
            scales[k] = min(SCALES, key=lambda s: np.median(np.abs(val.estimate[sel] * s - val.truth[sel])))
    return scales


def every_length_ahead(val: Frames, margin: float) -> np.ndarray:
    """Scales minimising the overall median error, each length bin held to ``margin`` × the content-free
    estimate's median error (a penalty per frame past it), by coordinate search from 1."""
    held = [
        (sel, margin * np.median(np.abs(val.content_free[sel] - val.truth[sel])))
        for _, sel in val.bins(MIN_VAL_ACTIONS)
    ]

    def objective(scales: np.ndarray) -> float:
        err = val.errors(scales)
        return float(np.median(err) + PENALTY * sum(max(0.0, np.median(err[sel]) - limit) for sel, limit in held))

    scales = np.ones(len(OFFSET_BINS))
    best = objective(scales)
    for _ in range(PASSES):
        for k in range(len(OFFSET_BINS)):
            for s in SCALES:
                trial = scales.copy()
                trial[k] = s
                if (score := objective(trial)) < best - 1e-9:
                    best, scales = score, trial
    return scales


def describe(test: Frames, scales: np.ndarray) -> str:
    err, base = test.errors(scales), np.abs(test.content_free - test.truth)
    parts = [f"all {np.median(err):.1f} ({np.median(base):.1f})"]
    parts += [
        f"{name} {np.median(err[sel]):.1f} ({np.median(base[sel]):.1f})" for name, sel in test.bins(MIN_BIN_ACTIONS)
    ]
    return ", ".join(parts)


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--margins", type=float, nargs="+", default=[0.9, 0.8], help="the M of every length ahead by M")
    args = ap.parse_args()

    val, test = validation_and_test(args)
    fitted = {"as served (no scale)": np.ones(len(OFFSET_BINS)), "per range": per_range(val)}
    fitted |= {f"every length ahead by {m}": every_length_ahead(val, m) for m in args.margins}
    print(f"{args.checkpoint}: median absolute error of the time to finish on test videos, frames (content-free)")
    for name, scales in fitted.items():
        print(f"  {name:26s} scales {np.round(scales, 2).tolist()}\n  {'':26s} {describe(test, scales)}")


if __name__ == "__main__":
    main()
