"""A training-only auxiliary target: the action's label, read from the head's GRU state as the action runs.

How long an action runs depends on what it is. A head that must name the action from its state learns to
tell classes apart within the first frames, so the state carries which class's lengths and phases apply;
progress alone teaches that only through its own, noisier error. The probe is one linear layer per member,
trained beside the head and then dropped: the checkpoint and the exported cell hold the head alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The probe reads every EVERY-th frame from the first: neighbouring states name the same action, and
#: reading every frame cost 1.6 times the extra training time for the same validation scores.
EVERY = 4


class LabelProbe(nn.Module):
    """One linear classifier per member, from its state ``(B, T, hidden)`` to the action labels' logits."""

    def __init__(self, members: int, hidden_dim: int, classes: int):
        super().__init__()
        self.read = nn.ModuleList(nn.Linear(hidden_dim, classes) for _ in range(members))

    def loss(self, states: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Each action's mean cross-entropy over the frames read (every :data:`EVERY`-th inside ``mask``
        ``(B, T)``), averaged over the actions (each weighs the same, as in the progress loss) and then over
        the members. ``states``: ``(members, B, T, hidden)``; ``labels``: ``(B,)`` label indices."""
        states, mask = states[:, :, ::EVERY], mask[:, ::EVERY]
        weight = mask.to(states.dtype)
        target = labels.unsqueeze(1).expand(mask.shape).reshape(-1)
        per_member = []
        for read, state in zip(self.read, states, strict=True):
            logits = read(state)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target, reduction="none").view_as(weight)
            per_member.append(((ce * weight).sum(1) / weight.sum(1).clamp(min=1)).mean())
        return torch.stack(per_member).mean()
