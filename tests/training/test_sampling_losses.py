import numpy as np
import pytest
import torch

from progress_stream.training.data import Action, Dataset
from progress_stream.training.losses import edge_masks, progress_loss, progress_weights, quantile_loss
from progress_stream.training.sampling import (
    bin_frames,
    dense_batches,
    feature_offset,
    prefix_batches,
    replay,
    target_frames,
    warped_lengths,
)


@pytest.mark.parametrize("length", [3, 4, 7, 10, 31, 200])
def test_bins_partition_the_action_into_early_mid_late(length):
    bins = [bin_frames(length, k) for k in range(3)]
    assert all(len(b) > 0 for b in bins)
    assert np.array_equal(np.sort(np.concatenate(bins)), np.arange(length))
    gt = [(b + 1) / length for b in bins]
    assert gt[0].max() <= 1 / 3 + 1e-9 < gt[1].min()
    assert gt[1].max() <= 2 / 3 + 1e-9 < gt[2].min()


def test_stratified_targets_cycle_through_every_bin():
    rng = np.random.default_rng(0)
    length = 30
    targets = target_frames(length, 300, rng, stratified=True)
    gt = (targets + 1) / length
    for k in range(3):
        chosen = gt[k::3]
        assert (chosen > k / 3).all() and (chosen <= (k + 1) / 3 + 1e-9).all()
        assert len(np.unique(targets[k::3])) == len(bin_frames(length, k))  # the whole bin gets used


def test_loss_weights_match_the_proposal():
    gt = torch.tensor([0.05, 0.1, 0.2, 0.5, 1.0])
    assert torch.allclose(progress_weights(gt, cap=10.0), torch.tensor([10.0, 10.0, 5.0, 2.0, 1.0]))


def test_loss_averages_per_sequence_and_ignores_padding():
    pred = torch.tensor([[0.0, 0.0, 9.0], [1.0, 1.0, 1.0]])
    gt = torch.tensor([[0.5, 1.0, 0.0], [0.5, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # sequence 1: weights 2, 1 over errors .5, 1 -> 2/3; sequence 2: weights 2, 1, 1 over .5, 0, 0 -> 1/4
    assert progress_loss(pred, gt, mask, weighted=True).item() == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert progress_loss(pred, gt, mask).item() == pytest.approx((0.75 + 0.5 / 3) / 2)
    assert progress_loss(pred, gt, mask, kind="l2").item() == pytest.approx(((0.25 + 1) / 2 + 0.25 / 3) / 2)


def test_a_teachers_progress_is_weighted_by_the_true_progress_of_its_frames():
    pred = torch.tensor([[0.0, 0.0]])
    taught, truth = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 1.0]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # weights 2 and 1 (the truth's, not the teacher's 1 and 1) over errors 1 and 1
    assert progress_loss(pred, taught, mask, weighted=True, truth=truth).item() == pytest.approx(1.0)
    assert progress_loss(pred, taught, mask, weighted=True, truth=truth, kind="l2").item() == pytest.approx(1.0)
    pred = torch.tensor([[0.0, 1.0]])  # error only where the truth weighs 2: (2·1 + 1·0) / 3
    assert progress_loss(pred, taught, mask, weighted=True, truth=truth).item() == pytest.approx(2 / 3)
    assert progress_loss(pred, taught, mask, weighted=True).item() == pytest.approx(1 / 2)


def test_edge_masks_take_the_first_and_last_tenth_at_least_one_frame():
    mask = torch.arange(12).unsqueeze(0) < torch.tensor([[12], [3]])
    start, end = edge_masks(mask)
    assert start[0].nonzero().flatten().tolist() == [0, 1] and end[0].nonzero().flatten().tolist() == [10, 11]
    assert start[1].nonzero().flatten().tolist() == [0] and end[1].nonzero().flatten().tolist() == [2]


def test_edge_weight_adds_the_mean_error_at_each_edge():
    pred = torch.zeros(1, 12)
    gt = torch.arange(1, 13, dtype=torch.float32).unsqueeze(0) / 12
    mask = torch.ones(1, 12, dtype=torch.bool)
    base = progress_loss(pred, gt, mask).item()
    start, end = (1 / 12 + 2 / 12) / 2, (11 / 12 + 1.0) / 2
    assert progress_loss(pred, gt, mask, edge=0.5).item() == pytest.approx(base + 0.5 * (start + end))


def test_time_warp_replays_the_action_in_order_at_another_speed():
    rng = np.random.default_rng(0)
    lengths = np.full(200, 40)
    assert warped_lengths(lengths, rng, 0.0) is lengths
    replayed = warped_lengths(lengths, rng, 0.5)
    assert np.all((40 * np.exp(-0.5) - 1 <= replayed) & (replayed <= 40 * np.exp(0.5) + 1))
    assert replayed.min() < 32 and replayed.max() > 50  # both slower and faster replays occur
    seq = np.arange(40, dtype=np.float32)[:, None]
    assert replay(seq, 40) is seq
    for n in (1, 25, 66):
        out = replay(seq, n)
        assert len(out) == n and np.all(np.diff(out[:, 0]) >= 0) and set(out[:, 0]) <= set(seq[:, 0])


def test_dense_batches_group_actions_by_their_replayed_length():
    """Equal actions replayed at many speeds: each batch pads only to its own longest replay."""
    n, length = 640, 40
    actions = [Action(f"v{i}", "a", 0, length - 1) for i in range(n)]
    features = [np.tile(np.arange(length, dtype=np.float32)[:, None], (1, 2)) for _ in range(n)]
    batches = list(dense_batches(Dataset(2, actions, features), 64, np.random.default_rng(0), warp=0.5))
    spans = [int(lengths.max() - lengths.min()) for _, lengths, _ in batches]
    assert sum(len(lengths) for _, lengths, _ in batches) == n
    everything = torch.cat([lengths for _, lengths, _ in batches])
    assert everything.max() - everything.min() > 30 and max(spans) <= 10
    for x, lengths, _ in batches:
        assert x.shape[1] == lengths.max()
        assert all(torch.all(x[i, : lengths[i], 0].diff() >= 0) for i in range(len(lengths)))


def test_batches_carry_each_action_s_label_as_an_index_into_the_sorted_labels():
    """Whole actions and sampled prefixes alike: the label beside each row is that row's action's."""
    spec = [("pour", 3), ("cut", 5), ("stir", 2), ("cut", 4), ("pour", 6)]
    actions = [Action("v", label, 0, n - 1) for label, n in spec]
    features = [np.full((n, 1), i, dtype=np.float32) for i, (_, n) in enumerate(spec)]  # each frame names its action
    data = Dataset(1, actions, features)
    ids, classes = data.label_ids
    assert ids.tolist() == [1, 0, 2, 0, 1] and classes == 3
    rng = np.random.default_rng(0)
    seen = []
    for x, _, labels in dense_batches(data, 2, rng):
        seen += [(int(row[0, 0]), int(label)) for row, label in zip(x, labels, strict=True)]
    assert sorted(seen) == [(i, int(ids[i])) for i in range(len(spec))]
    samples = [(i, t) for i in range(len(spec)) for t in range(spec[i][1])]
    for x, _, _, labels in prefix_batches(data, samples, 4, rng):
        assert [int(ids[int(row[0, 0])]) for row in x] == labels.tolist()


def test_the_feature_offset_moves_every_frame_of_an_action_by_one_vector():
    seq = np.random.default_rng(0).standard_normal((30, 4)).astype(np.float32)
    scale = np.array([0.0, 1.0, 2.0, 3.0])
    moved = feature_offset(seq, np.random.default_rng(1), scale)
    shift = moved - seq
    assert np.allclose(shift, shift[0]) and shift[0, 0] == 0.0 and np.abs(shift[0, 1:]).min() > 0
    assert feature_offset(seq, np.random.default_rng(1), None) is seq


def test_the_quantile_loss_is_least_at_the_quantile_of_the_truth_over_frames():
    gt = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]])
    mask = torch.ones_like(gt, dtype=torch.bool)
    grid = torch.linspace(0, 1, 101)
    losses = torch.stack([quantile_loss(torch.full_like(gt, float(c)), gt, mask, 0.2) for c in grid])
    assert 0.19 <= float(grid[losses.argmin()]) <= 0.3
    # frames count, not actions: a padded short action weighs its frames only
    short = torch.tensor([[0.5, 0.0, 0.0]])
    assert quantile_loss(torch.zeros(1, 3), short, short > 0, 0.5) == pytest.approx(0.25)
