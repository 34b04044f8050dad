"""``substeps``: an action is a sequence of discrete sub-steps with abrupt changes between them.

Each class has 2–6 sub-steps (a fixed number per class), each a prototype direction. An instance
spends a Dirichlet-random share of its frames in each and sometimes skips a middle one; within a
sub-step the embedding only jitters. The content tells which sub-step is running, not how far into
it: progress is revealed in coarse, uneven jumps.
"""

from __future__ import annotations

import numpy as np

from progress_stream.training.families.base import Family, unit


class Substeps(Family):
    name = "substeps"
    skip_rate = 0.15

    def structure(self, label: str) -> tuple[np.ndarray, np.ndarray]:
        """A class's sub-step prototypes ``(n_sub, dim)`` and typical shares ``(n_sub,)``, the same in every video."""
        crng = self.class_rng(label)
        n_sub = int(crng.integers(2, 7))
        protos = unit(crng.standard_normal((n_sub, self.cfg.dim)))
        return protos, crng.dirichlet(np.full(n_sub, 3.0))

    def action(self, label: str, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
        protos, typical = self.structure(label)
        n_sub = len(typical)
        keep = np.ones(n_sub, dtype=bool)
        if n_sub > 2 and self.rng.random() < self.skip_rate:
            keep[self.rng.integers(1, n_sub - 1)] = False
        shares = self.rng.dirichlet(20.0 * typical[keep] + 0.5)
        bounds = np.cumsum(shares)[:-1] * length
        which = np.flatnonzero(keep)[np.searchsorted(bounds, np.arange(length) + 0.5)]
        jitter = self.rng.standard_normal((length, self.cfg.dim)) * 0.25 * self.noise_gain / np.sqrt(self.cfg.dim)
        return protos[which] + jitter, which / (n_sub - 1)
