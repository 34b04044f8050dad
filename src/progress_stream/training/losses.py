"""Losses on progress: L1 (conditional median) or squared error (conditional mean), per action.

Options: the proposal's early weighting, and edge weighting, which adds the mean error over each
action's first and last 10 % of frames: the frames where a squeezed head is most wrong and where the
per-action mean gives a long action's edges little say.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Share of an action's frames (at least one) that counts as its start, and as its end.
EDGE_FRACTION = 0.1


def progress_weights(gt: Tensor, cap: float = 10.0) -> Tensor:
    """``min(cap, 1 / max(gt, 1/cap))``: gt 0.1 → 10, 0.2 → 5, 0.5 → 2, 1.0 → 1."""
    return torch.clamp(1.0 / torch.clamp(gt, min=1.0 / cap), max=cap)


def edge_masks(mask: Tensor) -> tuple[Tensor, Tensor]:
    """The first and the last ``ceil(EDGE_FRACTION · L)`` frames of each right-padded sequence of ``mask``."""
    lengths = mask.sum(dim=1, keepdim=True)
    n_edge = torch.ceil(EDGE_FRACTION * lengths).clamp(min=1)
    idx = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return idx < n_edge, mask & (idx >= lengths - n_edge)


def _per_sequence_mean(err: Tensor, w: Tensor) -> Tensor:
    return (w * err).sum(dim=1) / w.sum(dim=1).clamp(min=1e-8)


def progress_loss(
    pred: Tensor,
    gt: Tensor,
    mask: Tensor,
    kind: str = "l1",
    weighted: bool = False,
    cap: float = 10.0,
    edge: float = 0.0,
    truth: Tensor | None = None,
) -> Tensor:
    """Mean over sequences of each sequence's (weighted) mean error over its ``mask``ed frames.

    ``kind`` is ``l1`` (``|pred − gt|``) or ``l2`` (``(pred − gt)²``). Works for dense ``(B, T)``
    outputs and for one target per sequence ``(B, 1)`` alike; averaging per sequence first makes every
    action count once, as the per-action OGPE does. ``edge`` > 0 adds ``edge`` × (mean error over
    the start frames + mean error over the end frames) per sequence. ``weighted`` weighs each frame by its
    true progress, ``truth`` where ``gt`` is not the truth (a teacher's progress) and ``gt`` otherwise.
    """
    w = mask.to(pred.dtype)
    if weighted:
        w = w * progress_weights(gt if truth is None else truth, cap)
    err = (pred - gt).abs() if kind == "l1" else (pred - gt) ** 2
    per_seq = _per_sequence_mean(err, w)
    if edge > 0:
        for part in edge_masks(mask):
            per_seq = per_seq + edge * _per_sequence_mean(err, part.to(pred.dtype))
    return per_seq.mean()


def quantile_loss(pred: Tensor, gt: Tensor, mask: Tensor, level: float) -> Tensor:
    """Pinball loss of the ``level`` quantile over every ``mask``ed frame: its minimiser is the conditional
    ``level`` quantile of the truth. Averaged over frames, not per action, because the band's coverage is a
    share of frames: per-action averaging would fit the quantiles of short actions and leave the frames of
    long ones under-covered."""
    diff = gt - pred
    err = torch.maximum(level * diff, (level - 1.0) * diff)
    w = mask.to(pred.dtype)
    return (err * w).sum() / w.sum().clamp(min=1.0)
