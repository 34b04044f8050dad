"""A mean teacher: the moving average of the head's own weights, which the head learns from as from a
second net, at the cost of one forward pass without gradients per batch instead of a second net trained."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from progress_stream.training.model import ProgressHead


class MeanTeacher:
    """The head's weights averaged over its steps, each step's weight ``1 − decay``: a smoother copy of the
    head that reads held-out videos better than the head does at any one step."""

    def __init__(self, head: ProgressHead, decay: float):
        self.net = copy.deepcopy(head).requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, head: ProgressHead) -> None:
        """Move every weight ``1 − decay`` of the way to the head's, after each of the head's steps."""
        for mine, theirs in zip(self.net.parameters(), head.parameters(), strict=True):
            mine.lerp_(theirs, 1.0 - self.decay)

    @torch.no_grad()
    def progress(self, x: Tensor, lengths: Tensor) -> Tensor:
        """The teacher's progress on a batch ``(B, T)``, what the head is taught (its offsets stay 0 in
        training, as the head's do)."""
        return self.net.answer(x, lengths)[0]
