import torch

from progress_stream.training.config import TrainConfig
from progress_stream.training.model import ProgressHead
from progress_stream.training.train import decay_groups


def test_weight_decay_shrinks_the_weight_matrices_only():
    """One AdamW step with zero gradients moves a parameter by weight decay alone: the GRUs' and the MLP's
    weight matrices shrink by lr × decay, the biases and the learned initial states stay where they are."""
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
    assert decayed == 4 * 4  # ih, hh and the MLP's two layers, in each of the four members
