import json
from pathlib import Path

import pytest
import torch

from progress_stream.training.config import ConfigError, TrainConfig
from progress_stream.training.mean_teacher import MeanTeacher
from progress_stream.training.model import PROGRESS, ProgressHead
from tests.conftest import train_tiny


def _head(seed: int) -> ProgressHead:
    torch.manual_seed(seed)
    return ProgressHead(6, 5.0, **TrainConfig(hidden_dim=4, mlp_dim=3).model_kwargs())


def test_each_update_moves_every_teacher_weight_one_minus_decay_of_the_way_to_the_head():
    head, other = _head(0), _head(1)
    teacher = MeanTeacher(head, 0.9)
    before = [p.clone() for p in teacher.net.parameters()]
    torch.testing.assert_close(before, [p.detach() for p in head.parameters()])
    teacher.update(other)
    for mine, old, theirs in zip(teacher.net.parameters(), before, other.parameters(), strict=True):
        torch.testing.assert_close(mine, 0.9 * old + 0.1 * theirs.detach())


def test_the_teacher_reads_progress_without_gradients_and_leaves_the_head_alone():
    head = _head(0)
    teacher = MeanTeacher(head, 0.5)
    teacher.update(_head(1))
    x, lengths = torch.randn(3, 7, 6), torch.tensor([7, 4, 1])
    taught = teacher.progress(x, lengths)
    assert taught.shape == (3, 7) and not taught.requires_grad
    assert ((taught > 0) & (taught < 1)).all()
    assert all(p.requires_grad for p in head.parameters())
    assert not any(p.requires_grad for p in teacher.net.parameters())
    assert not torch.equal(taught, head.activate(head.member_outputs(x, lengths)[..., PROGRESS].mean(dim=0)))


def test_a_config_chooses_one_teacher():
    both = r"'teacher_members' \(1\) and 'teacher_decay' \(0.99\) each choose a teacher"
    with pytest.raises(ConfigError, match=both):
        TrainConfig(teacher_members=1, teacher_decay=0.99)


def test_training_with_a_mean_teacher_learns_from_it(tiny_data: Path, tmp_path: Path):
    """The same training with and without the mean teacher ends in different heads: the teacher's progress is
    part of the loss."""
    runs = {}
    for decay in (0.0, 0.9):
        out = tmp_path / str(decay)
        train_tiny(tiny_data, out, epochs=3, teacher_decay=decay, distill_weight=0.5, average_top=1)
        runs[decay] = json.loads((out / "train_summary.json").read_text())["history"]
    assert runs[0.0][0]["loss"] != runs[0.9][0]["loss"]
