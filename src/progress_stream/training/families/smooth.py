"""``smooth``: every class a smooth trajectory; the content phase drifts against time progress.

Each class owns a radial-basis blend of ``anchors`` random directions, so an embedding reveals the
phase continuously. Each instance runs through it at a drifting log-normal speed with pauses (15 % of
frames), so content phase and time progress disagree. The built-in generator of the first release.
"""

from __future__ import annotations

import numpy as np

from progress_stream.training.families.base import Family, unit


class Smooth(Family):
    name = "smooth"
    anchors = 5

    def action(self, label: str, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        anchors = unit(self.class_rng(label).standard_normal((self.anchors, self.cfg.dim)))
        centres = np.linspace(0.0, 1.0, self.anchors)
        width = 1.0 / (self.anchors - 1)
        phase = self.speed_phase(length)
        weights = np.exp(-0.5 * ((phase[:, None] - centres[None, :]) / (0.6 * width)) ** 2)
        weights /= weights.sum(axis=1, keepdims=True)
        return weights @ anchors, phase
