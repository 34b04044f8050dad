"""How far the time to finish should lean from the progress towards the band's low end.

    .venv/bin/python benchmarks/remaining_lean.py --checkpoint runs/shifted-s8-default/best.pt \
        --annotations data/shifted-s8/annotations.json --features data/shifted-s8/features [--split S.json]

The time to finish after n frames is n·(1 − q)/q, with q the progress moved a share w of the way to the
band's low end (LOW_END_WEIGHT in the cell contract). Where the content does not tell the length, the
head reads the longer actions too far along, and their frames left are the many; leaning on the low end
(calibrated on those actions) takes some of that back, at a cost on the shorter ones. For each w, it
prints the median absolute error in frames over all frames, as a ratio to the content-free estimate's,
and the worst length bin's ratio (bins with at least MIN_BIN_ACTIONS actions, as `progress eval` counts
them), on the checkpoint's validation videos and on the test videos. The contract's w is the one whose
worst validation bin, across the families, is least.
"""

from __future__ import annotations

import numpy as np
from checkpoint_args import checkpoint_parser
from remaining_scale import Frames, validation_and_test

from progress_stream.training.report import MIN_BIN_ACTIONS


def ratios(frames: Frames, weight: float) -> tuple[float, str, float]:
    """The overall median error's ratio to the content-free estimate's, and the worst bin with its ratio."""
    err, base = np.abs(frames.leaning(weight) - frames.truth), np.abs(frames.content_free - frames.truth)
    per_bin = {name: np.median(err[sel]) / np.median(base[sel]) for name, sel in frames.bins(MIN_BIN_ACTIONS)}
    worst = max(per_bin, key=per_bin.get)
    return float(np.median(err) / np.median(base)), worst, float(per_bin[worst])


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5])
    args = ap.parse_args()

    sets = dict(zip(("validation", "test"), validation_and_test(args), strict=True))
    print(f"{args.checkpoint}: time to finish against the content-free estimate (median absolute error ratio)")
    for weight in args.weights:
        cells = []
        for name, frames in sets.items():
            overall, worst, ratio = ratios(frames, weight)
            cells.append(f"{name} all {overall:.3f}, worst bin {ratio:.3f} ({worst})")
        print(f"  w={weight:<5} " + "; ".join(cells))


if __name__ == "__main__":
    main()
