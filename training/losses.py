"""Losses: L1 on progress, optionally weighted toward early frames."""

from __future__ import annotations

import torch
from torch import Tensor


def progress_weights(gt: Tensor, cap: float = 10.0) -> Tensor:
    """``min(cap, 1 / max(gt, 1/cap))``: gt 0.1 → 10, 0.2 → 5, 0.5 → 2, 1.0 → 1."""
    return torch.clamp(1.0 / torch.clamp(gt, min=1.0 / cap), max=cap)


def weighted_l1(pred: Tensor, gt: Tensor, mask: Tensor, weighted: bool = True, cap: float = 10.0) -> Tensor:
    """Mean over sequences of each sequence's (weighted) mean ``|pred - gt|`` over its ``mask``ed frames.

    Works for dense ``(B, T)`` outputs and for one target per sequence ``(B, 1)`` alike; averaging
    per sequence first makes every action count once, as the per-action OGPE does.
    """
    w = mask.to(pred.dtype)
    if weighted:
        w = w * progress_weights(gt, cap)
    per_seq = (w * (pred - gt).abs()).sum(dim=1) / w.sum(dim=1).clamp(min=1e-8)
    return per_seq.mean()
