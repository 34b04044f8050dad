"""What every family shares: per-class random streams, the background walk, per-video style and noise."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from progress_stream.training.data import BACKGROUND_ACTIONS


@dataclass(frozen=True)
class FamilyConfig:
    """Knobs shared by every family; the defaults are what the docs' numbers use."""

    stride: int = 8
    dim: int = 128
    seed: int = 0
    #: No per-video style, per-frame noise, jitter or distractors, from the same draws: the same timings and
    #: phases as the noisy dataset, so a head trained on both tells what the noise costs.
    clean: bool = False
    #: Another draw of every instance (its shares, speeds, cycles, style and noise) of the same classes: the
    #: class streams depend on the seed alone, so draws 1, 2, … are more videos of the same actions.
    draw: int = 0

    def __post_init__(self) -> None:
        for name in ("stride", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.draw < 0:
            raise ValueError(f"draw must be at least 0, not {self.draw}")


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (GTCC-like embeddings)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class Family:
    """A generator: :meth:`action` maps an instance of a class to ``(length, dim)`` content.

    Subclasses set ``name`` and implement :meth:`action`; they may override :meth:`finish` (the
    per-video style, noise and normalisation) and :meth:`background`.
    """

    name = ""
    style_scale = 0.35
    noise_scale = 0.45

    def __init__(self, cfg: FamilyConfig):
        self.cfg = cfg
        draw = [cfg.draw] if cfg.draw else []  # draw 0 keeps the stream every earlier dataset was written with
        self.rng = np.random.default_rng([cfg.seed, zlib.crc32(self.name.encode()), *draw])
        self.background_dir = unit(self.class_rng("__background__").standard_normal(cfg.dim))
        #: What every noise term is multiplied by: 0 when clean (still drawn, so the other draws stay put).
        self.noise_gain = 0.0 if cfg.clean else 1.0

    def class_rng(self, label: str) -> np.random.Generator:
        """A random stream owned by one action class (the same in every video and run)."""
        return np.random.default_rng([self.cfg.seed, zlib.crc32(self.name.encode()), zlib.crc32(label.encode())])

    def action(self, label: str, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        """Noise-free content ``(length, dim)`` of one instance, and the content phase ``(length,)`` it encodes.

        The content phase is what the content is a function of (besides the class); a head given it
        instead of the embeddings bounds what any head can read from this family's content.
        """
        raise NotImplementedError

    def background(self, length: int) -> np.ndarray:
        """A slow random walk around one shared background direction."""
        steps = self.rng.normal(0.0, 0.15 / np.sqrt(self.cfg.dim), (length, self.cfg.dim))
        return self.background_dir[None, :] + np.cumsum(steps, axis=0)

    def finish(self, x: np.ndarray, task: str) -> np.ndarray:
        """Per-video style offset, per-frame Gaussian noise, L2 normalisation."""
        dim = self.cfg.dim
        style = self.rng.standard_normal(dim) * self.style_scale * self.noise_gain / np.sqrt(dim)
        noise = self.rng.standard_normal(x.shape) * self.noise_scale * self.noise_gain / np.sqrt(dim)
        return unit(x + style + noise)

    def video(self, segments: list[tuple[str, int, int]], n_frames: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(n_frames, dim)`` and content phase ``(n_frames, 1)`` (0 on background), float32."""
        x = np.zeros((n_frames, self.cfg.dim))
        phase = np.zeros((n_frames, 1))
        for label, s, e in segments:
            n = e - s + 1
            if label in BACKGROUND_ACTIONS:
                x[s : e + 1] = self.background(n)
            else:
                x[s : e + 1], phase[s : e + 1, 0] = self.action(label, n, task)
        return self.finish(x, task).astype(np.float32), phase.astype(np.float32)

    def speed_phase(self, length: int, jitter: float = 0.5, pause_rate: float = 0.15) -> np.ndarray:
        """Monotone content phase in [0, 1]: a drifting log-normal speed with pauses."""
        rng = self.rng
        drift = np.cumsum(rng.normal(0.0, jitter / np.sqrt(max(length, 1)), length))
        speed = np.exp(rng.normal(0.0, jitter) * 0.3 + drift)
        speed[rng.random(length) < pause_rate] = 0.02
        cum = np.cumsum(speed) - speed[0]
        return cum / cum[-1] if cum[-1] > 0 else np.linspace(0.0, 1.0, length)
