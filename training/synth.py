"""Built-in stand-in data: real annotation timings, synthetic encoder-like embeddings.

The generator's model (a stand-in for real encoder features, not a claim about them):

* every action class owns a smooth trajectory through embedding space (radial-basis blend of
  ``anchors`` random directions), so an embedding partly reveals how far the action has got;
* every action instance runs through its trajectory at a varying speed (log-normal speed
  drifting frame to frame) with random pauses, so content-phase and time-progress disagree;
* every video adds its own style offset, every frame Gaussian noise;
* background segments are a slow random walk around a shared background direction;
* every frame is L2-normalised, like GTCC embeddings.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from training.data import BACKGROUND_ACTIONS, load_annotations


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator; the defaults are what the README's numbers use."""

    stride: int = 8
    dim: int = 128
    seed: int = 0
    anchors: int = 5
    style_scale: float = 0.35
    noise_scale: float = 0.45
    speed_jitter: float = 0.5
    pause_rate: float = 0.15


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _Generator:
    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.trajectories: dict[str, np.ndarray] = {}
        self.background = _unit(self.rng.standard_normal(cfg.dim))

    def trajectory(self, label: str) -> np.ndarray:
        if label not in self.trajectories:
            class_rng = np.random.default_rng([self.cfg.seed, zlib.crc32(label.encode())])
            self.trajectories[label] = _unit(class_rng.standard_normal((self.cfg.anchors, self.cfg.dim)))
        return self.trajectories[label]

    def phase(self, length: int) -> np.ndarray:
        """Monotone content phase in [0, 1] over an instance of ``length`` frames."""
        cfg, rng = self.cfg, self.rng
        drift = np.cumsum(rng.normal(0.0, cfg.speed_jitter / np.sqrt(max(length, 1)), length))
        speed = np.exp(rng.normal(0.0, cfg.speed_jitter) * 0.3 + drift)
        speed[rng.random(length) < cfg.pause_rate] = 0.02
        cum = np.cumsum(speed) - speed[0]
        return cum / cum[-1] if cum[-1] > 0 else np.linspace(0.0, 1.0, length)

    def action(self, label: str, length: int) -> np.ndarray:
        anchors = self.trajectory(label)
        centres = np.linspace(0.0, 1.0, self.cfg.anchors)
        width = 1.0 / (self.cfg.anchors - 1)
        phase = self.phase(length)[:, None]
        weights = np.exp(-0.5 * ((phase - centres[None, :]) / (0.6 * width)) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        return weights @ anchors

    def background_walk(self, length: int) -> np.ndarray:
        steps = self.rng.normal(0.0, 0.15 / np.sqrt(self.cfg.dim), (length, self.cfg.dim))
        return self.background[None, :] + np.cumsum(steps, axis=0)

    def video(self, segments: list[tuple[str, int, int]], n_frames: int) -> np.ndarray:
        cfg, rng = self.cfg, self.rng
        x = np.zeros((n_frames, cfg.dim))
        for label, s, e in segments:
            n = e - s + 1
            x[s : e + 1] = self.background_walk(n) if label in BACKGROUND_ACTIONS else self.action(label, n)
        style = rng.standard_normal(cfg.dim) * cfg.style_scale / np.sqrt(cfg.dim)
        noise = rng.standard_normal((n_frames, cfg.dim)) * cfg.noise_scale / np.sqrt(cfg.dim)
        return _unit(x + style + noise).astype(np.float32)


def synthesize(annotations: Path, out: Path, cfg: SynthConfig) -> dict:
    """Write ``out/annotations.json`` (timings divided by the stride) and ``out/features/*.npy``."""
    if cfg.stride < 1:
        raise ValueError("stride must be at least 1")
    videos = load_annotations(annotations)
    gen = _Generator(cfg)
    out = Path(out)
    (out / "features").mkdir(parents=True, exist_ok=True)
    strided: dict[str, dict] = {}
    n_frames_total = 0
    for video in tqdm(videos, desc=f"synth stride {cfg.stride}", unit="video", disable=None):
        segments = [(lab, s // cfg.stride, e // cfg.stride) for lab, s, e in video.segments]
        n_frames = max(e for _, _, e in segments) + 1
        np.save(out / "features" / f"{video.handle}.npy", gen.video(segments, n_frames))
        n_frames_total += n_frames
        task = strided.setdefault(
            video.task, {"handles": [], "hdl_actions": [], "hdl_start_times": [], "hdl_end_times": []}
        )
        task["handles"].append(video.handle)
        task["hdl_actions"].append([lab for lab, _, _ in segments])
        task["hdl_start_times"].append([s for _, s, _ in segments])
        task["hdl_end_times"].append([e for _, _, e in segments])
    (out / "annotations.json").write_text(json.dumps(strided))
    summary = {"videos": len(videos), "frames": n_frames_total, **cfg.__dict__}
    (out / "synth.json").write_text(json.dumps(summary, indent=2))
    return summary
