import numpy as np
import pytest
import torch

from training.losses import progress_weights, weighted_l1
from training.sampling import bin_frames, target_frames


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


def test_weighted_l1_averages_per_sequence_and_ignores_padding():
    pred = torch.tensor([[0.0, 0.0, 9.0], [1.0, 1.0, 1.0]])
    gt = torch.tensor([[0.5, 1.0, 0.0], [0.5, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    # sequence 1: weights 2, 1 over errors .5, 1 -> 2/3; sequence 2: weights 2, 1, 1 over .5, 0, 0 -> 1/4
    assert weighted_l1(pred, gt, mask).item() == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert weighted_l1(pred, gt, mask, weighted=False).item() == pytest.approx((0.75 + 0.5 / 3) / 2)
