import math

import pytest
import torch

from progress_stream.training.label_probe import EVERY, LabelProbe


def _probe(bias: list[float]) -> LabelProbe:
    """One member reading a 1-d state: logit k = state × k-th weight + bias k, weights (0, 1)."""
    probe = LabelProbe(members=1, hidden_dim=1, classes=len(bias))
    with torch.no_grad():
        probe.read[0].weight.copy_(torch.tensor([[0.0], [1.0]]))
        probe.read[0].bias.copy_(torch.tensor(bias))
    return probe


def test_the_probe_reads_every_few_frames_inside_each_action_and_weighs_actions_alike():
    """Cross-entropy ln(1 + e^-s) of label 1 on state s, ln(1 + e^s) of label 0: the states at the frames the
    probe reads (0, EVERY, 2·EVERY) are set apart from the rest, so reading any other frame or any frame past an
    action's end would move the loss."""
    assert EVERY == 4
    frames = 3 * EVERY
    states = torch.full((1, 2, frames, 1), 50.0)  # elsewhere: huge, so a read there costs ~50 for label 0
    states[0, 0, ::EVERY] = 0.0  # action 0 (label 1): ln 2 at every frame read
    states[0, 1, ::EVERY] = torch.tensor([[0.0], [math.log(3.0)], [-7.0]])  # action 1 (label 0), 6 frames
    mask = torch.arange(frames).unsqueeze(0) < torch.tensor([[frames], [6]])
    loss = _probe([0.0, 0.0]).loss(states, torch.tensor([1, 0]), mask)
    action1 = (math.log(2.0) + math.log(4.0)) / 2  # frames 0 and 4; frame 8 lies past its end
    assert loss.item() == pytest.approx((math.log(2.0) + action1) / 2, rel=1e-6)


def test_members_are_averaged_and_a_constant_probe_costs_the_labels_surprise():
    """Zero weights: every read gives the bias's softmax, whatever the state; two members average."""
    probe = LabelProbe(members=2, hidden_dim=3, classes=2)
    with torch.no_grad():
        for read, bias in zip(probe.read, ([0.0, math.log(3.0)], [0.0, 0.0]), strict=True):
            read.weight.zero_()
            read.bias.copy_(torch.tensor(bias))
    states = torch.randn(2, 2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss = probe.loss(states, torch.tensor([0, 1]), mask)
    first = (math.log(4.0) + math.log(4.0 / 3.0)) / 2  # p = (1/4, 3/4)
    assert loss.item() == pytest.approx((first + math.log(2.0)) / 2, rel=1e-6)
