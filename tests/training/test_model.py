import pytest
import torch

from progress_stream.training.config import TrainConfig
from progress_stream.training.model import ProgressHead


def head(input_dim: int, length_ref: float = 10.0, **changes) -> ProgressHead:
    """A head built the only way the project builds one: from a TrainConfig."""
    return ProgressHead(input_dim, length_ref, **TrainConfig(**changes).model_kwargs())


def perturb(model: ProgressHead) -> None:
    """Non-trivial initial states and input normalisation, so the tests can tell them apart."""
    with torch.no_grad():
        for member in model.members:
            member.h0.add_(torch.randn_like(member.h0))
        model.input_mean.add_(torch.randn_like(model.input_mean) * 0.1)
        model.input_scale.mul_(torch.rand_like(model.input_scale) + 0.5)
        steps = len(model.band_offset)
        model.band_offset.copy_(torch.stack([torch.linspace(-0.05, 0.2, steps), torch.linspace(0.1, -0.03, steps)], 1))


@pytest.mark.parametrize("encoding", ["log", "linear", "none"])
@pytest.mark.parametrize(("members", "layers", "rank"), [(1, 1, 0), (3, 1, 0), (2, 2, 0), (1, 1, 5), (2, 2, 5)])
def test_full_sequence_equals_step_by_step(encoding, members, layers, rank):
    torch.manual_seed(0)
    model = head(
        12, 7.0, position_encoding=encoding, hidden_dim=16, members=members, layers=layers, input_rank=rank
    ).eval()
    perturb(model)
    assert model.state_dim == members * layers * 16
    with torch.no_grad():
        x = torch.randn(3, 40, 12)
        dense, dense_band = model(x, dense=True)
        state = torch.zeros(3, model.state_dim)
        for i in range(40):
            progress, state, band = model.step(x[:, i], torch.full((3,), i, dtype=torch.long), state)
            assert torch.allclose(progress, dense[:, i], atol=1e-6)
            assert torch.allclose(band, dense_band[:, i], atol=1e-6)


def test_step_zero_starts_from_h0_and_ignores_state():
    torch.manual_seed(0)
    model = head(8, hidden_dim=16).eval()
    perturb(model)
    with torch.no_grad():
        x = torch.randn(2, 8)
        step = torch.zeros(2, dtype=torch.long)
        a = model.step(x, step, torch.zeros(2, model.state_dim))
        b = model.step(x, step, torch.randn(2, model.state_dim) * 100)
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        assert torch.allclose(a[0], model(x.unsqueeze(1), dense=True)[0][:, 0], atol=1e-6)


def test_the_ensemble_averages_its_members():
    torch.manual_seed(0)
    model = head(6, members=3, hidden_dim=8).eval()
    with torch.no_grad():
        x = torch.randn(2, 5, 6)
        each = model.member_outputs(x)[..., 0]
        assert each.shape == (3, 2, 5)
        assert not torch.allclose(each[0], each[1])  # members start from different weights
        assert torch.allclose(model.answer(x)[0], torch.sigmoid(each.mean(dim=0)))


def test_the_band_holds_the_progress_lies_in_0_1_and_each_end_moves_with_its_sides_offset():
    torch.manual_seed(0)
    model = head(6, hidden_dim=8).eval()
    perturb(model)
    with torch.no_grad():
        x = torch.randn(4, 250, 6)
        progress, band = model(x, dense=True)
        assert ((band[..., 0] <= progress) & (progress <= band[..., 1])).all()
        assert band.min() >= 0.0 and band.max() <= 1.0
        model.band_offset.add_(0.1)
        _, wider = model(x, dense=True)
        assert (wider[..., 0] <= band[..., 0]).all() and (wider[..., 1] >= band[..., 1]).all()
        assert (wider[..., 1] - wider[..., 0]).mean() > (band[..., 1] - band[..., 0]).mean()
        model.band_offset[:, 1].add_(0.1)  # the high end's side alone
        _, higher = model(x, dense=True)
        assert torch.equal(higher[..., 0], wider[..., 0]) and (higher[..., 1] >= wider[..., 1]).all()
        assert (higher[..., 1] > wider[..., 1]).any()


def test_input_norm_is_fitted_on_training_frames_and_applied_in_the_graph():
    frames = torch.randn(500, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5.0
    fitted = head(4, input_norm="standardize")
    fitted.fit_input_norm(frames)
    z = (frames - fitted.input_mean) * fitted.input_scale
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-4) and torch.allclose(z.std(0), torch.ones(4), atol=1e-3)
    plain = head(4, input_norm="none")
    plain.fit_input_norm(frames)
    assert torch.equal(plain.input_mean, torch.zeros(4)) and torch.equal(plain.input_scale, torch.ones(4))


def test_head_has_no_defaults_of_its_own():
    with pytest.raises(TypeError):
        ProgressHead(4, 10.0)


def test_relative_encoding_is_arange_over_prefix_length():
    model = head(4, position_encoding="relative")
    x = torch.zeros(2, 5, 4)
    feats = model._inputs(x, torch.tensor([5, 3]))[..., -1]
    assert torch.allclose(feats[0], torch.arange(5) / 5.0)
    assert torch.allclose(feats[1, :3], torch.arange(3) / 3.0)
    with pytest.raises(ValueError, match="cannot run step by step"):
        model.step(torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), torch.zeros(1, model.state_dim))


def test_log_encoding_depends_on_the_index_alone():
    model = head(4, position_encoding="log")
    feat = model.position_features(torch.tensor([0, 9]))
    assert torch.allclose(feat.squeeze(-1), torch.log1p(torch.tensor([1.0, 10.0])) / torch.log1p(torch.tensor(10.0)))


def test_clamp_output_reaches_both_ends():
    model = head(4, output="clamp")
    assert model.activate(torch.tensor([-0.3, 0.4, 1.7])).tolist() == pytest.approx([0.0, 0.4, 1.0])


def test_a_low_rank_input_reads_the_embedding_only_through_its_projections():
    """Embeddings that differ only where the projection is blind give the same answers."""
    torch.manual_seed(0)
    model = head(12, input_rank=3).eval()
    assert model.members[0].gru.input_size == 3 + 1  # the projections and the position feature
    blind = torch.linalg.svd(model.project.weight).Vh[3:]  # (9, 12): directions the projection ignores
    x = torch.randn(2, 15, 12)
    moved = x + torch.randn(2, 15, 9) @ blind
    with torch.no_grad():
        assert torch.allclose(model(x, dense=True)[0], model(moved, dense=True)[0], atol=1e-5)
        assert not torch.allclose(model(x, dense=True)[0], model(x + torch.randn(2, 15, 12), dense=True)[0])
