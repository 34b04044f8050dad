"""The exported cell's contract, shared by the exporter (writes it), the runtime (checks it) and evaluation.

Version 2 adds the ``band`` output: an interval ``[lo, hi]`` around each frame's progress at the nominal
coverage the metadata states (``coverage``), calibrated on validation videos. Version 1 cells (no band)
still load; their answers carry no interval. :func:`remaining_frames` is the one definition of the time
to finish that the server answers and ``progress eval`` scores.
"""

from __future__ import annotations

import numpy as np

#: Bumped when the graph's signature or the meaning of its metadata changes.
FORMAT_VERSION = "2"
SUPPORTED_FORMAT_VERSIONS = frozenset({"1", FORMAT_VERSION})

#: name → (ONNX Runtime type string, shape with "batch", "D" and "H" as symbols)
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedding": ("tensor(float)", ("batch", "D")),
    "step": ("tensor(int64)", ("batch",)),
    "state": ("tensor(float)", ("batch", "H")),
}
#: The outputs of a version 1 cell, in order.
OUTPUTS_V1: dict[str, tuple[str, tuple[str, ...]]] = {
    "progress": ("tensor(float)", ("batch",)),
    "next_state": ("tensor(float)", ("batch", "H")),
}
#: The outputs of the current version, in order: version 1's, then the interval (lo, hi) per row.
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {**OUTPUTS_V1, "band": ("tensor(float)", ("batch", 2))}
#: The outputs each readable format version has.
OUTPUTS_BY_VERSION = {"1": OUTPUTS_V1, FORMAT_VERSION: OUTPUTS}
REQUIRED_METADATA = ("format_version", "embedding_dim", "hidden_dim", "position_encoding")
#: Metadata of a version 2 cell: the band's nominal coverage, e.g. "0.8".
COVERAGE_KEY = "coverage"

#: Progress below this counts as this in the time to finish, so that the estimate stays finite (at most
#: 999 × the frames seen): a head that reads ~0 progress says "far from the end", not "forever".
MIN_PROGRESS = 1e-3


def remaining_frames(progress: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Frames left after the ``seen``-th frame (1-based count) of an action at ``progress``: ``seen·(1−p)/p``.

    If progress is ``seen / L`` this is exactly ``L − seen``. Monotone decreasing in ``p``, so the band's
    ``hi`` gives the low end of the remaining interval and its ``lo`` the high end, at the same coverage.
    Any shape; ``progress`` and ``seen`` broadcast.
    """
    p = np.clip(np.asarray(progress, dtype=np.float32), MIN_PROGRESS, 1.0)
    return np.asarray(seen, dtype=np.float32) * (1.0 - p) / p


def remaining_band(band: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The interval of :func:`remaining_frames` from a progress ``band`` ``(..., 2)``: ``(..., 2)`` (low, high)."""
    seen = np.asarray(seen, dtype=np.float32)[..., None]
    return remaining_frames(band[..., ::-1], seen)
