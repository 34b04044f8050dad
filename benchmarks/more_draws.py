"""Would more training videos help? A family's dataset with more draws of every training video.

    .venv/bin/python benchmarks/more_draws.py --family substeps --stride 3 --draws 4 --out data/substeps-s3-x4
    progress train --annotations data/substeps-s3-x4/annotations.json --features data/substeps-s3-x4/features \
        --split data/substeps-s3-x4/split.json --out runs/substeps-s3-x4
    progress eval --checkpoint runs/substeps-s3-x4/best.pt \
        --annotations data/substeps-s3/annotations.json --features data/substeps-s3/features

Draw 0 is the dataset ``progress synth`` writes. Draws 1 … K−1 (``progress synth --draw k``) are new
instances of the same classes on the same real timings: other sub-step shares, speeds, cycles, style and
noise. Every training video of draw 0 gains K−1 copies, ``HANDLE.drawK``; the test videos do not. The
split file keeps draw 0's test videos as the test set, so the head is read on the very videos a head
trained on draw 0 alone is read on (evaluate against draw 0's annotations, as above, for the same
length-Bayes baseline). It names the validation videos too: draw 0's, with their copies, so that no
copy of a validation video (its timings) is fitted. With ``--clean`` every draw is noise-free: how far
a head gets with more videos and no noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from progress_stream.training.data import EGOPROCEL, load_annotations, split_handles, validation_split
from progress_stream.training.families import FamilyConfig
from progress_stream.training.synth import synthesize

FOLDERS = ("features", "phase")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", required=True)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--draws", type=int, default=4, help="draws in all, draw 0 included")
    ap.add_argument("--clean", action="store_true", help="every draw without noise (progress synth --clean)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder")

    synthesize(EGOPROCEL, args.out, FamilyConfig(stride=args.stride, clean=args.clean), args.family)
    annotations = json.loads((args.out / "annotations.json").read_text())
    videos = load_annotations(args.out / "annotations.json")
    split = split_handles(videos)
    split["val"] = validation_split(videos, split["train"])["val"]
    train, val = set(split["train"]), set(split["val"])
    for draw in range(1, args.draws):
        staged = args.out / f"draw{draw}"
        synthesize(EGOPROCEL, staged, FamilyConfig(stride=args.stride, clean=args.clean, draw=draw), args.family)
        for entry in annotations.values():
            for i, handle in enumerate(list(entry["handles"])):
                if handle not in train:
                    continue
                copy = f"{handle}.draw{draw}"
                for folder in FOLDERS:
                    (staged / folder / f"{handle}.npy").rename(args.out / folder / f"{copy}.npy")
                entry["handles"].append(copy)
                for key in ("hdl_actions", "hdl_start_times", "hdl_end_times"):
                    entry[key].append(entry[key][i])
                split["train"].append(copy)
                if handle in val:
                    split["val"].append(copy)
        shutil.rmtree(staged)
    (args.out / "annotations.json").write_text(json.dumps(annotations))
    (args.out / "split.json").write_text(json.dumps(split))
    print(
        f"{args.out}: {len(train)} training videos ({len(val)} of them validate) × {args.draws} draws, "
        f"{len(split['test'])} test videos"
    )


if __name__ == "__main__":
    main()
