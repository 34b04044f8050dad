"""What a reader that knows how `substeps` is made reads on its test videos: the scale for a head's ratio.

    .venv/bin/python benchmarks/substeps_reader.py --data data/substeps-s3 [--split S.json] \
        [--bandwidth 0.15] [--prior-weight 2]

A head learns from about 220 videos what this reader is given: each class's number of sub-steps, their
typical shares, the skip rate and how much an instance's shares vary (the generator's own parameters,
rebuilt from ``synth.json``). It reads every frame's sub-step exactly (``phase/``, the noise-free
content), and each action's last frame when the next segment already shows there, as the features do.
Its length prior per class is a kernel density (in log length, ``--bandwidth``) of that class's training
actions, shrunk towards all training actions with the weight of ``--prior-weight`` actions.

At each frame it weighs every length by the prior and by the chance that an instance of that length
changed sub-step where this one did and has not changed since (each boundary's chance from the shares'
stick-breaking Beta laws, at the previous boundary's frame), and answers the weighted median of the
progress with each action's frames weighted 1/L, as the per-action OGPE counts them. A frame that no
length explains (after a sub-step too short to show a frame; printed as a share) gets the class's prior
alone, so the reader is a little worse than the best one that knows all this.
Scored as `progress eval` scores a head: OGPE ÷ length-Bayes, overall and per length bin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.special import betainc

from progress_stream.training.data import Action, Video, action_lengths, load_annotations, split_handles
from progress_stream.training.evaluate import LengthBayes, action_errors, length_bins
from progress_stream.training.families import FamilyConfig, make_family
from progress_stream.training.families.substeps import Substeps


class Reader:
    """The reader's answers for one dataset's classes, over lengths 1 … ``max_length``."""

    def __init__(self, family: Substeps, train: dict[str, list[int]], max_length: int, bandwidth: float, weight: float):
        self.family = family
        self.grid = np.arange(1, max_length + 1, dtype=np.float64)
        self.bandwidth, self.weight = bandwidth, weight
        self.train = train
        self.pooled = self._density([n for lengths in train.values() for n in lengths])
        self.unexplained = 0  # frames answered from the prior alone

    def _density(self, lengths: list[int]) -> np.ndarray:
        z = (np.log(self.grid)[:, None] - np.log(np.asarray(lengths, dtype=np.float64))[None, :]) / self.bandwidth
        density = np.exp(-0.5 * z * z).sum(axis=1) / self.grid
        return density / density.sum()

    def prior(self, label: str) -> np.ndarray:
        own = self.train.get(label, [])
        if not own:
            return self.pooled
        return (len(own) * self._density(own) + self.weight * self.pooled) / (len(own) + self.weight)

    def generator(self, label: str) -> tuple[np.ndarray, list[tuple[list[int], float]]]:
        """The class's typical shares, and each set of kept sub-steps with its chance, as :meth:`Substeps.action`
        draws them."""
        typical = self.family.structure(label)[1]
        n_sub = len(typical)
        skip = self.family.skip_rate if n_sub > 2 else 0.0
        kept = [(list(range(n_sub)), 1.0 - skip)]
        kept += [([k for k in range(n_sub) if k != m], skip / (n_sub - 2)) for m in range(1, n_sub - 1)]
        return typical, kept

    def answers(self, label: str, which: np.ndarray) -> np.ndarray:
        """Progress at every frame of an action whose frames show sub-steps ``which``."""
        typical, patterns = self.generator(label)
        grid, n = self.grid, len(which)
        frames = np.arange(n, dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, which[1:] != which[:-1]])
        shown = list(which[starts])
        seen = np.searchsorted(starts, np.arange(n), side="right")  # sub-steps shown by each frame
        weight = np.zeros((n, len(grid)))
        for kept, chance in patterns:
            alpha = 20.0 * typical[kept] + 0.5
            rest = np.cumsum(alpha[::-1])[::-1]  # rest[j]: the sum of alpha[j:]
            for q in range(1, min(len(shown), len(kept)) + 1):
                if shown[:q] != kept[:q]:
                    break
                likelihood, left = np.ones(len(grid)), np.ones(len(grid))
                for j in range(q - 1):  # sub-step j ended where sub-step j + 1 began
                    b = starts[j + 1]
                    hi = 1.0 - (1.0 - (b + 0.5) / grid) / left
                    lo = 1.0 - (1.0 - (b - 0.5) / grid) / left
                    likelihood = likelihood * (_cdf(alpha[j], rest[j + 1], hi) - _cdf(alpha[j], rest[j + 1], lo))
                    left = np.maximum(1.0 - b / grid, 1e-12)
                rows = np.flatnonzero(seen == q)
                w = likelihood[None, :] * (grid[None, :] >= frames[rows, None] + 1)
                if q < len(kept):  # the running sub-step has lasted through this frame
                    w = w * (1.0 - _cdf(alpha[q - 1], rest[q], 1.0 - (1.0 - (frames[rows, None] + 0.5) / grid) / left))
                weight[rows] += chance * w
        weight *= (self.prior(label) / grid)[None, :]
        unexplained = np.flatnonzero(weight.sum(axis=1) <= 0)
        self.unexplained += len(unexplained)
        for i in unexplained:
            weight[i] = self.prior(label) / grid * (grid >= i + 1)
        cum = np.cumsum(weight, axis=1)
        median = np.array([np.searchsorted(c, c[-1] / 2.0) for c in cum])
        return np.minimum((frames + 1) / grid[median], 1.0)


def _cdf(a: float, b: float, x: np.ndarray) -> np.ndarray:
    return betainc(a, b, np.clip(x, 0.0, 1.0))


def _shown(video: Video, action: Action, phase: np.ndarray, n_sub: int) -> tuple[np.ndarray, bool]:
    """The sub-steps an action's own frames show, and whether its last frame already shows the next segment."""
    ends_seen = any(s == action.end and (label, s) != (action.label, action.start) for label, s, _ in video.segments)
    own = phase[action.start : action.end + 1 - ends_seen, 0]
    return np.rint(own * (n_sub - 1)).astype(int), ends_seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a `progress synth --family substeps` folder")
    ap.add_argument("--split", type=Path, default=None)
    ap.add_argument("--bandwidth", type=float, default=0.15, help="the length prior's kernel width, in log length")
    ap.add_argument("--prior-weight", type=float, default=2.0, help="actions' worth of all training lengths")
    args = ap.parse_args()

    synth = json.loads((args.data / "synth.json").read_text())
    if synth["family"] != "substeps":
        raise SystemExit(f"{args.data}: family {synth['family']!r}; this reader knows substeps only")
    family = make_family("substeps", FamilyConfig(stride=synth["stride"], dim=synth["dim"], seed=synth["seed"]))
    videos = load_annotations(args.data / "annotations.json")
    handles = split_handles(videos, args.split)
    train: dict[str, list[int]] = {}
    for video in videos:
        if video.handle in set(handles["train"]):
            for a in video.actions:
                train.setdefault(a.label, []).append(a.length)
    tests = [(v, a) for v in videos if v.handle in set(handles["test"]) for a in v.actions]
    longest = max(max(map(max, train.values())), max(a.length for _, a in tests))
    reader = Reader(family, train, int(1.5 * longest), args.bandwidth, args.prior_weight)
    answers = []
    for video, action in tests:
        phase = np.load(args.data / "phase" / f"{video.handle}.npy")
        which, ends_seen = _shown(video, action, phase, len(reader.generator(action.label)[0]))
        progress = reader.answers(action.label, which) if len(which) else np.zeros(0)
        answers.append(np.r_[progress, 1.0] if ends_seen else progress)
    lengths = np.array([a.length for _, a in tests])
    bayes = LengthBayes(action_lengths(videos, handles["train"]))
    own = action_errors(answers, lengths)
    base = action_errors([bayes(int(n)) for n in lengths], lengths)
    print(f"{args.data}: {len(lengths)} test actions; OGPE {own.mean():.4f}, length-Bayes {base.mean():.4f}")
    alone = reader.unexplained / lengths.sum()
    print(f"  OGPE ÷ length-Bayes {own.mean() / base.mean():.3f} ({alone:.1%} of frames from the length prior alone)")
    for name, sel in length_bins(lengths).items():
        if sel.any():
            reader_bin, base_bin = own[sel].mean(), base[sel].mean()
            print(f"  {name:>7} frames ({sel.sum():4d} actions): OGPE {reader_bin:.3f} against {base_bin:.3f}")


if __name__ == "__main__":
    main()
