"""``progress synth``: a family's synthetic embeddings on real annotation timings, in the GTCC layout."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from progress_stream.training.data import load_annotations
from progress_stream.training.families import FamilyConfig, make_family


def synthesize(annotations: Path, out: Path, cfg: FamilyConfig, family: str = "smooth") -> dict:
    """Write ``out/annotations.json`` (timings divided by the stride), ``out/features/*.npy``, ``synth.json``
    and ``out/phase/*.npy``: each frame's content phase, features for the family's phase-oracle bound."""
    videos = load_annotations(annotations)
    gen = make_family(family, cfg)
    out = Path(out)
    for folder in ("features", "phase"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    strided: dict[str, dict] = {}
    n_frames_total = 0
    for video in tqdm(videos, desc=f"synth {family} stride {cfg.stride}", unit="video", disable=None):
        segments = [(lab, s // cfg.stride, e // cfg.stride) for lab, s, e in video.segments]
        n_frames = max(e for _, _, e in segments) + 1
        features, phase = gen.video(segments, n_frames, video.task)
        np.save(out / "features" / f"{video.handle}.npy", features)
        np.save(out / "phase" / f"{video.handle}.npy", phase)
        n_frames_total += n_frames
        task = strided.setdefault(
            video.task, {"handles": [], "hdl_actions": [], "hdl_start_times": [], "hdl_end_times": []}
        )
        task["handles"].append(video.handle)
        task["hdl_actions"].append([lab for lab, _, _ in segments])
        task["hdl_start_times"].append([s for _, s, _ in segments])
        task["hdl_end_times"].append([e for _, _, e in segments])
    (out / "annotations.json").write_text(json.dumps(strided))
    summary = {"family": family, "videos": len(videos), "frames": n_frames_total, **asdict(cfg)}
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary
