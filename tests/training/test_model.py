import pytest
import torch

from training.model import ProgressHead


@pytest.mark.parametrize("encoding", ["log", "linear", "none"])
def test_full_sequence_equals_step_by_step(encoding):
    torch.manual_seed(0)
    model = ProgressHead(12, hidden_dim=16, position_encoding=encoding, length_ref=7.0).eval()
    with torch.no_grad():
        model.h0.add_(torch.randn(16))
        x = torch.randn(3, 40, 12)
        dense = model(x, dense=True)
        state = torch.zeros(3, 16)
        for i in range(40):
            progress, state = model.step(x[:, i], torch.full((3,), i, dtype=torch.long), state)
            assert torch.allclose(progress, dense[:, i], atol=1e-6)


def test_step_zero_starts_from_h0_and_ignores_state():
    torch.manual_seed(0)
    model = ProgressHead(8, hidden_dim=16).eval()
    with torch.no_grad():
        model.h0.copy_(torch.randn(16))
        x = torch.randn(2, 8)
        step = torch.zeros(2, dtype=torch.long)
        a = model.step(x, step, torch.zeros(2, 16))
        b = model.step(x, step, torch.randn(2, 16) * 100)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert torch.allclose(a[0], model(x.unsqueeze(1), dense=True)[:, 0], atol=1e-6)


def test_relative_encoding_is_arange_over_prefix_length():
    model = ProgressHead(4, position_encoding="relative")
    x = torch.zeros(2, 5, 4)
    feats = model._inputs(x, torch.tensor([5, 3]))[..., -1]
    assert torch.allclose(feats[0], torch.arange(5) / 5.0)
    assert torch.allclose(feats[1, :3], torch.arange(3) / 3.0)
    with pytest.raises(ValueError, match="cannot run step by step"):
        model.step(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, 64))


def test_log_encoding_depends_on_the_index_alone():
    model = ProgressHead(4, position_encoding="log", length_ref=10.0)
    feat = model.position_features(torch.tensor([0, 9]))
    assert torch.allclose(feat.squeeze(-1), torch.log1p(torch.tensor([1.0, 10.0])) / torch.log1p(torch.tensor(10.0)))


def test_clamp_output_reaches_both_ends():
    model = ProgressHead(4, output="clamp")
    assert model.activate(torch.tensor([-0.3, 0.4, 1.7])).tolist() == pytest.approx([0.0, 0.4, 1.0])
