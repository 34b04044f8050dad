import itertools
import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from progress_stream.export.onnx_cell import export_checkpoint
from progress_stream.training.calibration import edge_offsets
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.config import TrainConfig
from progress_stream.training.evaluate import predict_causal, progress_metrics
from progress_stream.training.label_probe import LabelProbe
from progress_stream.training.model import ProgressHead
from progress_stream.training.train import (
    Candidate,
    SideBySide,
    decay_groups,
    keep_best,
    load_training_data,
    lr_schedule,
    mean_state,
)
from tests.conftest import train_tiny


def test_weight_decay_shrinks_the_weight_matrices_only():
    """One AdamW step with zero gradients moves a parameter by weight decay alone: the input projection's, the
    GRUs' and the MLP's weight matrices shrink by lr × decay, the biases and the learned initial states stay
    where they are."""
    torch.manual_seed(0)
    nets = [ProgressHead(6, 5.0, **TrainConfig(hidden_dim=4, mlp_dim=3, members=m).model_kwargs()) for m in (1, 3)]
    named = [(name, p) for net in nets for name, p in net.named_parameters()]
    groups = decay_groups(nets, 0.5)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for _, p in named)
    before = [p.detach().clone() for _, p in named]
    for _, p in named:
        p.grad = torch.zeros_like(p)
    torch.optim.AdamW(groups, lr=0.1).step()
    decayed = 0
    for (name, p), old in zip(named, before, strict=True):
        is_weight = name.rsplit(".", 1)[-1].startswith("weight")
        decayed += is_weight
        torch.testing.assert_close(p.detach(), old * (0.95 if is_weight else 1.0))
    assert decayed == 4 * 4 + 2  # ih, hh and the MLP's two layers in each of the four members; each projection


@pytest.mark.parametrize("floor", [0.0, 0.3])
def test_the_learning_rate_falls_from_lr_to_its_floor(floor):
    """Halfway through, the cosine stands midway between lr and the floor; after the last epoch, at the floor."""
    cfg = TrainConfig(lr=0.01, lr_floor=floor, epochs=10)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = lr_schedule(opt, cfg)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(cfg.epochs):
        opt.step()
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == pytest.approx(0.01)
    assert seen[5] == pytest.approx(0.01 * (1 + floor) / 2)
    assert seen[-1] == pytest.approx(0.01 * floor)
    assert all(a >= b for a, b in itertools.pairwise(seen))


def test_training_keeps_the_epoch_whose_served_answers_read_validation_best(tiny_data: Path, tmp_path: Path):
    """The kept epoch is the one whose answers, after the start and end offsets, score best on validation; the
    reported validation metrics are the served head's (offsets in place), the kept epoch's raw ones beside them."""
    # a run whose raw and served bests differ (no label target: the run this scenario was found on)
    path = train_tiny(
        tiny_data, tmp_path, epochs=8, lr=0.1, edge_weight=0.0, time_warp=0.5, average_top=1, label_weight=0.0
    )
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    history = summary["history"]
    best = summary["best_epoch"]
    assert summary["averaged_epochs"] == [best]
    assert best == 1 + int(np.argmin([h["served_ogpe"] for h in history]))
    assert best != 1 + int(np.argmin([h["val_ogpe"] for h in history]))  # on this run the raw answers' best differs
    model, ckpt = load_checkpoint(path)
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features")
    served = progress_metrics(predict_causal(model, data.val).progress, data.val.lengths)
    assert summary["val"]["ogpe"] == ckpt.metrics["val"]["ogpe"] == pytest.approx(served["ogpe"])
    assert served["ogpe"] <= history[best - 1]["served_ogpe"] + 1e-6  # the search's objective adds a penalty
    assert ckpt.metrics["val_raw"]["ogpe"] == pytest.approx(history[best - 1]["val_ogpe"])
    # the offsets kept from that epoch's search are the ones a fresh search on the kept head finds
    assert edge_offsets(model, data.val) == ckpt.metrics["progress_offsets"]


def test_the_mean_of_state_dicts_averages_every_tensor_element_wise():
    states = [
        {"w": torch.tensor([[1.0, 2.0]]), "b": torch.tensor(0.0)},
        {"w": torch.tensor([[3.0, 6.0]]), "b": torch.tensor(1.0)},
    ]
    mean = mean_state(states)
    torch.testing.assert_close(mean["w"], torch.tensor([[2.0, 4.0]]))
    torch.testing.assert_close(mean["b"], torch.tensor(0.5))


def test_the_candidates_are_the_k_best_served_best_first_and_the_earlier_epoch_on_a_tie():
    kept: list[Candidate] = []
    for epoch, served in enumerate([0.5, 0.3, 0.4, 0.3, 0.6, 0.2], start=1):
        kept = keep_best(kept, Candidate(served, epoch, None, {}, {}), 3)
    assert [(c.epoch, c.served) for c in kept] == [(6, 0.2), (2, 0.3), (4, 0.3)]


def test_training_serves_the_mean_of_the_best_epochs_when_it_reads_validation_better(tiny_data: Path, tmp_path: Path):
    """With ``average_top`` = 3 the head holds the mean of the weights of the three epochs that served validation
    best, and it serves validation better than any one epoch did; its offsets are its own search's."""
    path = train_tiny(
        tiny_data, tmp_path, epochs=8, lr=0.1, edge_weight=0.0, time_warp=0.5, average_top=3, label_weight=0.0
    )
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    served = [h["served_ogpe"] for h in summary["history"]]
    assert summary["averaged_epochs"] == sorted(1 + int(i) for i in np.argsort(served, kind="stable")[:3])
    assert summary["best_epoch"] == 1 + int(np.argmin(served))
    assert summary["val"]["ogpe"] < min(served)
    model, ckpt = load_checkpoint(path)
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features")
    assert progress_metrics(predict_causal(model, data.val).progress, data.val.lengths)["ogpe"] == pytest.approx(
        summary["val"]["ogpe"]
    )
    assert ckpt.metrics["averaged_epochs"] == summary["averaged_epochs"]
    assert edge_offsets(model, data.val) == ckpt.metrics["progress_offsets"]


@pytest.fixture
def two_threads():
    """Two torch threads for the test, the process's own count again after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _pair(threads: int) -> tuple[SideBySide, list[torch.Tensor]]:
    """A head and its teacher (their own initialisations), each with its label probe, on one batch of four
    7-frame actions."""
    torch.set_num_threads(threads)
    cfg = TrainConfig(hidden_dim=8, mlp_dim=4, label_weight=0.5)
    teacher_cfg = cfg.replace(teacher_members=0, band_weight=0.0)
    torch.manual_seed(0)
    model = ProgressHead(6, 5.0, **cfg.model_kwargs())
    teacher = ProgressHead(6, 5.0, **teacher_cfg.model_kwargs())
    probes = (LabelProbe(1, 8, 3), LabelProbe(1, 8, 3))
    lengths = torch.tensor([7, 5, 3, 6])
    steps = torch.arange(1, 8, dtype=torch.float32)
    batch = [
        torch.randn(4, 7, 6),
        lengths,
        (steps / lengths.unsqueeze(1)).clamp(max=1.0),
        steps.unsqueeze(0) <= lengths.unsqueeze(1),
        torch.tensor([2, 0, 1, 0]),
    ]
    return SideBySide(model, cfg, teacher, teacher_cfg, probes), batch


def _grads(pair: SideBySide) -> list[torch.Tensor]:
    nets = (pair.model, pair.probe, pair.teacher, pair.teacher_probe)
    return [p.grad.clone() for net in nets for p in net.parameters()]


def test_side_by_side_runs_the_teacher_on_a_worker_with_half_the_threads_and_the_same_gradients(two_threads):
    """With two threads, each epoch's steps run the teacher's passes on a worker thread and the head's here, one
    thread each, and give the gradients and loss that one after the other gives; validation gets both threads
    back."""
    alone, batch = _pair(1)
    with alone.epoch():
        assert alone.pool is None
        expected_loss = alone.step(batch)
    expected = _grads(alone)

    pair, _ = _pair(2)
    ran_on: dict[str, set[str]] = {"model": set(), "teacher": set()}
    for name in ran_on:  # where each net's forward pass and its backward pass (a weight's gradient) ran
        member = getattr(pair, name).members[0]
        member.register_forward_hook(lambda *_, n=name: ran_on[n].add(threading.current_thread().name))
        member.head[2].weight.register_hook(lambda _, n=name: ran_on[n].add(threading.current_thread().name))
    with pair.epoch():
        assert torch.get_num_threads() == 1
        loss = pair.step(batch)
    assert torch.get_num_threads() == 2
    assert ran_on["model"] == {threading.main_thread().name}
    assert len(ran_on["teacher"]) == 1 and ran_on["teacher"] != ran_on["model"]
    assert torch.equal(loss, expected_loss) and not loss.requires_grad
    for got, want in zip(_grads(pair), expected, strict=True):
        assert torch.equal(got, want)


def test_a_head_trained_beside_its_teacher_is_the_same_on_one_thread_and_on_two(
    tiny_data: Path, tmp_path: Path, two_threads
):
    """The side-by-side steps change where the work runs, not what is learned: two epochs with a teacher give
    the same weights on two threads as on one."""
    heads = {}
    for threads in (1, 2):
        path = train_tiny(tiny_data, tmp_path / str(threads), epochs=2, teacher_members=1, threads=threads)
        heads[threads] = load_checkpoint(path)[0].state_dict()
    assert torch.get_num_threads() == 2
    assert heads[1].keys() == heads[2].keys()
    assert all(torch.equal(heads[1][k], heads[2][k]) for k in heads[1])


@pytest.mark.parametrize("regime", ["dense", "prefix"])
def test_a_label_target_changes_what_the_head_learns_and_the_checkpoint_holds_the_head_alone(
    tiny_data: Path, tmp_path: Path, regime: str
):
    """The probe trains beside the head and is dropped: the checkpoint has the same tensors and model config as
    one trained without it, and exports to the same cell contract, but the weights differ."""
    heads = {}
    for weight in (0.0, 1.0):
        path = train_tiny(tiny_data, tmp_path / str(weight), regime=regime, label_weight=weight, teacher_members=1)
        heads[weight] = load_checkpoint(path)
        export_checkpoint(path, tmp_path / f"{weight}.onnx")
    (plain, plain_meta), (probed, probed_meta) = heads[0.0], heads[1.0]
    assert probed_meta.train_config.label_weight == 1.0 and probed_meta.model_config == plain_meta.model_config
    assert plain.state_dict().keys() == probed.state_dict().keys()
    assert not torch.equal(plain.members[0].gru.weight_hh_l0, probed.members[0].gru.weight_hh_l0)
    assert onnx.load(tmp_path / "1.0.onnx").graph.output == onnx.load(tmp_path / "0.0.onnx").graph.output
