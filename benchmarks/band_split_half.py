"""How closely a calibration set of a given size can hold the band's coverage per action length.

    .venv/bin/python benchmarks/band_split_half.py --checkpoint runs/smooth-s3-default/best.pt \
        --annotations data/smooth-s3/annotations.json --features data/smooth-s3/features \
        [--split S.json] [--splits 20] [--videos validation|both]

A head is calibrated on its validation videos and read on the test videos, so one number per length bin
says little about the next set of videos. Here the test videos are split in two at random, many times:
the band is calibrated on one half (as training calibrates on validation) and its coverage read per
length bin on the other. The halves hold about as many actions as a validation split of the training
handles. With ``--videos validation`` the validation videos are split instead: a calibration method
can be chosen that way without reading the test videos. With ``--videos both`` the validation and test
videos are pooled and split again as the project splits them: per task, as many videos calibrate as the
validation split holds of that task, and the rest (as many as the test split holds) are read; this tells
how often one such split lets every length bin hold, and where the actual test reading falls among them
(it reads the test videos: for information, never to choose a calibration). For the shipped calibration,
for the calibration before it (the low end fitted to the pool of the longer actions, not to each of
their lengths: ``per_length_low=False``) and for one offset
per frames-seen range alone (the same on both ends, blind to length), it prints the worst bin's distance
from nominal per split (bins with at least MIN_BIN_ACTIONS actions in the read half), its median and
maximum, and the share of splits in which some bin is further than the band's promise
(MAX_COVERAGE_ERROR, the target `progress eval` checks) from nominal. The halves are drawn as
training draws them for the check it reports (``band_halves``, :func:`coverage_on_halves`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
from checkpoint_args import checkpoint_parser

from progress_stream.training.calibration import (
    MIN_BIN_FRAMES,
    Calibrator,
    band_scores,
    bin_mask,
    conformal_offset,
    coverage_on_halves,
    offset_table,
)
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.data import load_annotations, load_dataset, split_handles, validation_split
from progress_stream.training.evaluate import LENGTH_BINS, bin_name
from progress_stream.training.model import OFFSET_BINS, OFFSET_STEPS
from progress_stream.training.report import MAX_COVERAGE_ERROR, MIN_BIN_ACTIONS


def frames_seen_offsets(scores: np.ndarray, seen: np.ndarray, _length: np.ndarray, coverage: float) -> np.ndarray:
    """One split-conformal offset per frames-seen range, on both sides: what calibration is without lengths."""
    either = scores.max(axis=1)
    table = np.full((OFFSET_STEPS, 2), conformal_offset(either, coverage), dtype=np.float32)
    for lo, hi in OFFSET_BINS:
        if (in_bin := bin_mask(seen, lo, hi)).sum() >= MIN_BIN_FRAMES:  # a thin bin keeps all frames' offset
            table[lo - 1 : hi] = conformal_offset(either[in_bin], coverage)
    return table


CALIBRATORS: dict[str, Calibrator] = {
    "shipped (two-sided, length-fitted)": offset_table,
    "low end fitted to the pool of longer actions": partial(offset_table, per_length_low=False),
    "frames-seen offsets alone": frames_seen_offsets,
}


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--videos", choices=("test", "validation", "both"), default="test", help="the videos to split")
    args = ap.parse_args()

    model, meta = load_checkpoint(args.checkpoint)
    coverage = meta.train_config.coverage
    videos = load_annotations(args.annotations)
    split = split_handles(videos, args.split)
    test = split["test"]
    if args.videos != "test":  # the videos the head was calibrated on, as training splits them
        split = validation_split(videos, split["train"], meta.train_config.val_fraction, split.get("val"))
    handles = {"test": test, "validation": split["val"], "both": split["val"] + test}[args.videos]
    data = load_dataset(videos, args.features, handles)
    scores, seen = band_scores(model, data)
    action_video = data.videos
    draw = None
    if args.videos == "both":
        draw = partial(per_task_draw, per_task_groups({v.handle: v.task for v in videos}, action_video, split["val"]))
    print(
        f"{args.checkpoint}: {len(np.unique(action_video))} {args.videos} videos, {len(data.actions)} actions; "
        f"{args.splits} random halves"
    )
    for name, calibrator in CALIBRATORS.items():  # the same halves for each: the seed draws them
        shares, counts = coverage_on_halves(
            scores, seen, data.lengths, action_video, coverage, calibrator, args.splits, args.seed, draw
        )
        # each split's worst length bin (of those with enough actions in the read half) off nominal
        worst = np.nanmax(np.where(counts >= MIN_BIN_ACTIONS, np.abs(shares - coverage), np.nan), axis=1)
        past = int((worst > MAX_COVERAGE_ERROR).sum())
        print(
            f"  {name:36s} worst bin off nominal: median {np.median(worst):.3f}, max {worst.max():.3f}; "
            f"splits with a bin past {MAX_COVERAGE_ERROR}: {past}/{args.splits}"
        )
        if draw is not None:
            actual = coverage_on_halves(
                scores, seen, data.lengths, action_video, coverage, calibrator, 1, draw=lambda _, h: split["val"]
            )[0][0]
            enough = counts[0] >= MIN_BIN_ACTIONS
            rank = " · ".join(
                f"{bin_name(lo, hi)} {actual[j]:.3f} (mean {np.nanmean(shares[:, j]):.3f}, "
                f"below it in {np.mean(shares[:, j] < actual[j]):.0%})"
                for j, (lo, hi) in enumerate(LENGTH_BINS)
                if enough[j]
            )
            print(f"    the actual split's test videos: {rank}")


def per_task_groups(task: dict[str, str], videos: np.ndarray, validation: list[str]) -> list[tuple[list[str], int]]:
    """Each task's pooled videos (in ``np.unique`` order, as the draws see them) and how many of them the
    validation split holds."""
    by_task: dict[str, list[str]] = {}
    for h in np.unique(videos).tolist():
        by_task.setdefault(task[h], []).append(h)
    return [(group, len(set(group) & set(validation))) for group in by_task.values()]


def per_task_draw(groups: list[tuple[list[str], int]], rng: np.random.Generator, _handles: np.ndarray) -> np.ndarray:
    """Per task, as many of its pooled videos as the validation split holds of that task, at random."""
    return np.array([h for group, k in groups for h in rng.choice(group, k, replace=False)])


if __name__ == "__main__":
    main()
