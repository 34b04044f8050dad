"""``shifted``: weak phase in a few dimensions, distractors, per-task domain shift, unnormalised.

Like pooled CNN features (ResNet): non-negative, large and uneven in scale, not L2-normalised. Only a
16-d subspace carries a class trajectory (weakly: half the amplitude of the class identity in it);
half of the dimensions are distractors that wander independently of any action. Every task rotates
and offsets the content (domain shift), every video has its own noise level, and instances run with
speed warps and long pauses.
"""

from __future__ import annotations

import zlib

import numpy as np

from progress_stream.training.families.base import Family

SIGNAL_DIMS = 16


class Shifted(Family):
    name = "shifted"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.tasks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.scale = np.exp(self.class_rng("__scale__").normal(0.0, 1.0, cfg.dim))

    def task_shift(self, task: str) -> tuple[np.ndarray, np.ndarray]:
        """A random orthogonal map and offset of the signal subspace, fixed per task."""
        if task not in self.tasks:
            trng = np.random.default_rng([self.cfg.seed, zlib.crc32(b"task"), zlib.crc32(task.encode())])
            q, _ = np.linalg.qr(trng.standard_normal((SIGNAL_DIMS, SIGNAL_DIMS)))
            self.tasks[task] = (q, trng.normal(0.0, 0.5, SIGNAL_DIMS))
        return self.tasks[task]

    def action(self, label: str, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        crng = self.class_rng(label)
        identity = crng.standard_normal(SIGNAL_DIMS)
        start, end = crng.standard_normal((2, SIGNAL_DIMS)) * 0.5
        phase = self.speed_phase(length, jitter=0.7, pause_rate=0.25)
        sig = identity + (1.0 - phase[:, None]) * start + phase[:, None] * end
        rot, offset = self.task_shift(task)
        x = np.zeros((length, self.cfg.dim))
        x[:, :SIGNAL_DIMS] = sig @ rot + offset
        return x, phase

    def background(self, length: int) -> np.ndarray:
        x = np.zeros((length, self.cfg.dim))
        x[:, :SIGNAL_DIMS] = self.background_dir[:SIGNAL_DIMS] * 3.0
        return x

    def finish(self, x: np.ndarray, task: str) -> np.ndarray:
        """Distractor walks in the upper half, per-video noise level, softplus, per-dimension scale."""
        n, dim = x.shape
        half = dim // 2
        walk = np.cumsum(self.rng.normal(0.0, 0.3, (n, dim - half)), axis=0)
        x[:, half:] = (walk - walk.mean(axis=0)) * self.noise_gain
        noise = self.rng.standard_normal(x.shape) * self.rng.uniform(0.2, 0.8) * self.noise_gain
        return np.logaddexp(0.0, x + noise) * self.scale
