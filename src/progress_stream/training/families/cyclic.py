"""``cyclic``: repetitive actions (stirring, screwing, whisking) whose number of cycles varies.

Each class has a wind-up and a wind-down pose and a cycle in a 2-d plane of its own. An instance
spends ~10–20 % of its frames winding up, cycles 1–6 times (drawn per instance, not tied to its
length), then winds down. The middle reveals the cycle's phase, which says almost nothing about
progress; only a faint drift and the wind-down do.
"""

from __future__ import annotations

import numpy as np

from progress_stream.training.families.base import Family, unit


class Cyclic(Family):
    name = "cyclic"

    def action(self, label: str, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        crng = self.class_rng(label)
        up, down, c1, c2, drift = unit(crng.standard_normal((5, self.cfg.dim)))
        lo, hi = self.rng.uniform(0.08, 0.2, size=2)
        phase = self.speed_phase(length, jitter=0.3, pause_rate=0.05)
        cycles = self.rng.integers(1, 7)
        mid = np.clip((phase - lo) / max(1.0 - lo - hi, 1e-6), 0.0, 1.0)
        angle = 2 * np.pi * cycles * mid + self.rng.uniform(0, 2 * np.pi)
        cyc = np.cos(angle)[:, None] * c1 + np.sin(angle)[:, None] * c2 + 0.3 * mid[:, None] * drift
        w_up = np.clip(1.0 - phase / lo, 0.0, 1.0)[:, None]
        w_down = np.clip((phase - (1.0 - hi)) / hi, 0.0, 1.0)[:, None]
        return w_up * up + w_down * down + (1.0 - w_up - w_down) * cyc, phase
