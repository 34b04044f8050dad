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
#: The time to finish reads the progress this share of the way towards the band's low end. Where the
#: content does not tell the length, the head reads the longer actions too far along, and those are the
#: ones with many frames left; the band's low end is calibrated on them. Chosen on validation videos by
#: the worst length bin across the synthetic families (``benchmarks/remaining_lean.py``).
LOW_END_WEIGHT = 0.25


def remaining_frames(
    progress: np.ndarray, seen: np.ndarray, band: np.ndarray | None = None, low_end_weight: float = LOW_END_WEIGHT
) -> np.ndarray:
    """Frames left after the ``seen``-th frame (1-based count) of an action: ``seen·(1−q)/q``, where ``q`` is
    ``progress`` moved ``low_end_weight`` of the way to the low end of its ``band`` ``(..., 2)`` (``progress``
    itself without a band, as from a version 1 cell).

    If ``q`` is ``seen / L`` this is exactly ``L − seen``. Monotone decreasing in ``q``, so the band's ``hi``
    gives the low end of the remaining interval and its ``lo`` the high end, at the same coverage, and the
    estimate lies between them. Any shape; the arguments broadcast.
    """
    q = np.asarray(progress, dtype=np.float32)
    if band is not None:
        q = q + np.float32(low_end_weight) * (np.asarray(band, dtype=np.float32)[..., 0] - q)
    q = np.clip(q, MIN_PROGRESS, 1.0)
    return np.asarray(seen, dtype=np.float32) * (1.0 - q) / q


def remaining_band(band: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """The interval of :func:`remaining_frames` from a progress ``band`` ``(..., 2)``: ``(..., 2)`` (low, high)."""
    seen = np.asarray(seen, dtype=np.float32)[..., None]
    return remaining_frames(band[..., ::-1], seen)
