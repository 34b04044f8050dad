import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from progress_stream.training.calibration import edge_offsets
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.config import TrainConfig
from progress_stream.training.evaluate import predict_causal, progress_metrics
from progress_stream.training.model import ProgressHead
from progress_stream.training.train import decay_groups, load_training_data, lr_schedule
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
    path = train_tiny(tiny_data, tmp_path, epochs=8, lr=0.1, edge_weight=0.0, time_warp=0.5)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    history = summary["history"]
    best = summary["best_epoch"]
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
