"""How far a checkpoint's test numbers move with the draw of test videos.

    .venv/bin/python benchmarks/video_spread.py --checkpoint runs/cyclic-s8-default/best.pt \
        --annotations data/cyclic-s8/annotations.json --features data/cyclic-s8/features [--split S.json] \
        [--draws 1000] [--target 0.45]

The test split is one draw of videos, so OGPE ÷ length-Bayes and the band's coverage on it are estimates.
Here the test videos are resampled with replacement many times (a bootstrap over videos: the actions and
frames of one video are not independent) and each resample scored as `progress eval` scores the split. It
prints each number on the split, the resamples' standard deviation and their 5–95 % range, and for the
ratio the share of resamples at or below ``--target``.
"""

from __future__ import annotations

import numpy as np
from checkpoint_args import checkpoint_parser

from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.data import action_lengths, load_annotations, load_dataset, split_handles
from progress_stream.training.evaluate import LengthBayes, action_errors, band_inside, predict_causal


def spread(name: str, on_split: float, draws: np.ndarray) -> str:
    low, high = np.percentile(draws, [5, 95])
    return f"{name} {on_split:.3f} ± {draws.std():.3f} (5–95 %: {low:.3f}–{high:.3f})"


def main() -> None:
    ap = checkpoint_parser(__doc__)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", type=float, default=0.45, help="the ratio a family should read at or below")
    args = ap.parse_args()

    model, _ = load_checkpoint(args.checkpoint)
    videos = load_annotations(args.annotations)
    handles = split_handles(videos, args.split)
    test = load_dataset(videos, args.features, handles["test"])
    answers = predict_causal(model, test)
    bayes = LengthBayes(action_lengths(videos, handles["train"]))
    head = action_errors(answers.progress, test.lengths)
    base = action_errors([bayes(int(n)) for n in test.lengths], test.lengths)
    inside = band_inside(answers.band, test.lengths)
    action_video = test.videos
    frame_video = np.repeat(action_video, test.lengths)
    names = np.unique(action_video)
    actions = {v: np.flatnonzero(action_video == v) for v in names}
    frames = {v: np.flatnonzero(frame_video == v) for v in names}
    rng = np.random.default_rng(args.seed)
    ratio, coverage = np.empty(args.draws), np.empty(args.draws)
    for k in range(args.draws):
        pick = rng.choice(names, len(names))
        a = np.concatenate([actions[v] for v in pick])
        ratio[k] = head[a].mean() / base[a].mean()
        coverage[k] = inside[np.concatenate([frames[v] for v in pick])].mean()
    print(f"{args.checkpoint}: {len(names)} test videos, {len(head)} actions; {args.draws} resamples")
    print(
        f"  {spread('OGPE ÷ length-Bayes', head.mean() / base.mean(), ratio)}; at or below {args.target}: "
        f"{np.mean(ratio <= args.target):.2f} of resamples"
    )
    print(f"  {spread('coverage', inside.mean(), coverage)}")


if __name__ == "__main__":
    main()
