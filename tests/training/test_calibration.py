"""The band's calibration on validation videos, and the time to finish's evaluation."""

from pathlib import Path

import numpy as np
import pytest

from progress_stream.contract.cell import LOW_END_WEIGHT, remaining_band, remaining_frames
from progress_stream.training.calibration import (
    EDGE_PENALTY,
    EDGE_STEPS,
    END_LIMIT,
    START_LIMIT,
    band_scores,
    calibrate,
    conformal_offset,
    coverage_on_halves,
    covered,
    edge_offsets,
    edge_search,
    halves_summary,
    offset_table,
)
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.evaluate import (
    LENGTH_BINS,
    RemainingBayes,
    action_errors,
    band_inside,
    band_metrics,
    predict_causal,
    progress_metrics,
    remaining_metrics,
)
from progress_stream.training.model import OFFSET_BINS, OFFSET_STEPS
from progress_stream.training.train import load_training_data
from tests.conftest import train_tiny


@pytest.fixture(scope="module")
def calibrated(tiny_data: Path, tmp_path_factory):
    path = train_tiny(tiny_data, tmp_path_factory.mktemp("band"), epochs=2)
    model, _ = load_checkpoint(path)
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features")
    return model, data


def test_on_its_calibration_frames_the_band_holds_the_nominal_share(calibrated):
    model, data = calibrated
    for coverage in (0.6, 0.9):  # the fit actions: every bin they reach has its own offset
        calibrate(model, data.fit, coverage)
        inside = band_inside(predict_causal(model, data.fit).band, data.fit.lengths)
        assert abs(inside.mean() - coverage) <= 0.03  # calibrated, not merely wide


def two_lengths(short: int = 200, long: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores ``(frames, 2)``, frames seen and action length of 4-frame actions whose truth lies above the
    progress, and of 30-frame actions whose first 5 frames read far too high (truth well below): the
    frames-seen bin 1-5 mixes the two, which leave the band on opposite sides."""
    rng = np.random.default_rng(0)
    scores, seen, length = [], [], []
    for n, count in ((4, short), (30, long)):
        for _ in range(count):
            s = np.full((n, 2), -np.inf)
            side = rng.integers(0, 2, n)
            side[: min(n, 5)] = 1 if n == 4 else 0
            s[np.arange(n), side] = rng.uniform(-0.1, 0.1, n) + np.where(np.arange(n) < 5, 0.1 if n == 30 else 0.0, 0)
            scores.append(s)
            seen.append(np.arange(1, n + 1))
            length.append(np.full(n, n))
    return np.concatenate(scores), np.concatenate(seen), np.concatenate(length)


def test_each_end_is_fitted_to_the_actions_that_leave_the_band_on_its_side():
    scores, seen, length = two_lengths()
    coverage = 0.8
    table = offset_table(scores, seen, length, coverage)
    inside = covered(scores, seen, table)
    for n in (4, 30):
        assert abs(inside[length == n].mean() - coverage) <= 0.01, n
    first = seen <= 5  # the high end holds the short actions, the low end the long ones' hard start
    assert table[0, 1] == pytest.approx(conformal_offset(scores[first & (length == 4), 1], coverage), abs=0.003)
    assert table[0, 0] == pytest.approx(conformal_offset(scores[first & (length == 30), 0], coverage), abs=0.003)
    # one offset for both ends of the bin covers all its frames at the nominal share, but not each length
    blind = np.full_like(table, conformal_offset(scores[first].max(axis=1), coverage))
    blind[5:] = table[5:]
    shares = [covered(scores, seen, blind)[length == n].mean() for n in (4, 30)]
    assert shares[0] > coverage + 0.05 and shares[1] < coverage - 0.05, shares


def test_the_low_end_holds_each_length_of_the_longer_actions_where_their_pool_leaves_the_longest_below():
    # bin 1-5: 20 short actions leave above, 30 of 30 frames start easy, 12 of 120 frames start hard (below)
    rng = np.random.default_rng(0)
    scores, seen, length = [], [], []
    for n, count, low in ((4, 20, None), (30, 30, (-0.1, 0.1)), (120, 12, (0.1, 0.3))):
        for _ in range(count):
            s = np.full((n, 2), -np.inf)
            if low is None:
                s[:, 1] = rng.uniform(-0.1, 0.1, n)
            else:
                s[:5, 0] = rng.uniform(*low, 5)
                s[5:, 0] = rng.uniform(-0.1, 0.1, n - 5)
            scores.append(s)
            seen.append(np.arange(1, n + 1))
            length.append(np.full(n, n))
    scores, seen, length = np.concatenate(scores), np.concatenate(seen), np.concatenate(length)
    first = seen <= 5
    shares = {}
    for per_length in (False, True):
        inside = covered(scores, seen, offset_table(scores, seen, length, 0.8, per_length_low=per_length))
        shares[per_length] = [inside[first & (length == n)].mean() for n in (30, 120)]
    assert shares[False][1] < 0.5  # pooled: the 120-frame actions are a fifth of the frames passing through
    assert min(shares[True]) >= 0.8 and shares[True][0] == 1.0, shares  # each length held; the easy one fully


#: Four one-action videos: (length, each frame's high-end score), the value naming the video; a frame is
#: inside where its score is at most 0, the offset of the fit below. `c` holds half its frames inside.
HALVES_VIDEOS = {"a": (3, [-1.0] * 3), "b": (3, [1.0] * 3), "c": (12, [-2.0, 2.0] * 6), "d": (12, [-3.0] * 12)}


def test_the_band_is_fitted_on_one_half_of_the_videos_and_read_on_the_other():
    fitted_on = []

    def fit(scores: np.ndarray, seen: np.ndarray, length: np.ndarray, coverage: float) -> np.ndarray:
        fitted_on.append({h for h, (_, v) in HALVES_VIDEOS.items() if np.isin(v, scores[:, 1]).all()})
        assert len(scores) == sum(HALVES_VIDEOS[h][0] for h in fitted_on[-1]) and coverage == 0.8
        return np.zeros((OFFSET_STEPS, 2), np.float32)

    lengths = np.array([n for n, _ in HALVES_VIDEOS.values()])
    high = np.concatenate([v for _, v in HALVES_VIDEOS.values()])
    scores = np.stack([np.full_like(high, -np.inf), high], axis=1)
    seen = np.concatenate([np.arange(1, n + 1) for n in lengths])
    shares, counts = coverage_on_halves(scores, seen, lengths, np.array(list(HALVES_VIDEOS)), 0.8, fit, splits=12)
    assert shares.shape == counts.shape == (12, len(LENGTH_BINS)) and len(fitted_on) == 12
    short, mid = [i for i, (lo, _) in enumerate(LENGTH_BINS) if lo in (1, 11)]
    inside = {"a": 1.0, "b": 0.0, "c": 0.5, "d": 1.0}
    for split, fitted in enumerate(fitted_on):
        read = set(HALVES_VIDEOS) - fitted
        assert len(fitted) == len(read) == 2
        for col, group in ((short, {"a", "b"}), (mid, {"c", "d"})):
            mine = sorted(read & group)
            assert counts[split, col] == len(mine)
            expected = np.mean([inside[h] for h in mine]) if mine else np.nan  # equal lengths within a bin
            np.testing.assert_equal(shares[split, col], expected)
        others = [i for i in range(len(LENGTH_BINS)) if i not in (short, mid)]
        assert np.isnan(shares[split, others]).all() and not counts[split, others].any()
    assert len({frozenset(f) for f in fitted_on}) > 1  # the halves are drawn at random


def test_a_single_video_has_no_halves_to_check():
    def fit(*_args) -> np.ndarray:
        raise AssertionError("nothing to fit")

    scores = np.stack([np.full(12, -np.inf), np.zeros(12)], axis=1)
    shares, counts = coverage_on_halves(scores, np.arange(1, 13), np.array([12]), np.array(["a"]), 0.8, fit)
    assert np.isnan(shares).all() and not counts.any() and halves_summary(shares, counts) == {}


def test_the_halves_summary_gives_the_median_and_spread_of_the_bins_a_half_holds_enough_of():
    shares = np.full((11, len(LENGTH_BINS)), np.nan)
    counts = np.zeros((11, len(LENGTH_BINS)), np.int64)
    shares[:, 0], counts[:, 0] = np.linspace(0.7, 0.9, 11), 10  # enough actions in every half
    shares[:, 1], counts[:, 1] = 0.8, [9] * 6 + [40] * 5  # too few in most halves
    shares[:5, 2], counts[:5, 2], counts[5:, 2] = 0.75, 30, 12  # held in every half, and NaN-free where held
    shares[5:, 2] = 0.85
    summary = halves_summary(shares, counts)
    assert list(summary) == ["1-5", "11-20"]
    assert summary["1-5"] == pytest.approx({"actions": 10.0, "median": 0.8, "low": 0.72, "high": 0.88})
    assert summary["11-20"] == pytest.approx({"actions": 12.0, "median": 0.85, "low": 0.75, "high": 0.85})


def test_calibration_reports_the_band_on_held_out_halves(calibrated):
    model, data = calibrated
    result = calibrate(model, data.fit, 0.8)
    halves = result["band_halves"]
    assert set(result) == {"band_offsets", "band_halves"} and halves  # the fit actions fill some length bin
    for h in halves.values():
        assert h["actions"] >= 10 and 0.0 <= h["low"] <= h["median"] <= h["high"] <= 1.0


def test_a_higher_coverage_gives_a_wider_band(calibrated):
    model, data = calibrated
    widths = []
    for coverage in (0.6, 0.9):
        calibrate(model, data.val, coverage)
        widths.append(band_metrics(predict_causal(model, data.val).band, data.val.lengths)["width"])
    assert widths[1] > widths[0]


def test_scores_are_the_least_offset_that_holds_the_truth(calibrated):
    model, data = calibrated
    scores, seen = band_scores(model, data.val)
    assert len(scores) == len(seen) == data.val.lengths.sum()
    model.band_offset.fill_(0.0)
    bands = np.concatenate(predict_causal(model, data.val).band)
    truth = np.concatenate([np.arange(1, n + 1) / n for n in data.val.lengths]).astype(np.float32)
    inside = (bands[:, 0] <= truth) & (truth <= bands[:, 1])
    assert (inside == (scores <= 0).all(axis=1)).mean() > 0.999  # float rounding at the edge aside
    assert scores.shape == (len(seen), 2) and not np.isfinite(scores).all(axis=1).any()  # one side per frame


def test_the_time_to_finish_is_exact_at_the_true_progress_and_its_band_reverses_the_ends():
    seen = np.arange(1, 21)
    assert np.allclose(remaining_frames(seen / 20, seen), 20 - seen, atol=1e-4)
    band = np.stack([seen / 25, np.minimum(seen / 15, 1.0)], axis=-1)
    low, high = remaining_band(band, seen).T
    assert (low <= 20 - seen + 1e-4).all() and (high >= 20 - seen - 1e-4).all()
    assert np.isfinite(remaining_frames(np.zeros(3), np.ones(3))).all()


def test_the_time_to_finish_leans_a_quarter_of_the_way_to_the_bands_low_end_and_stays_in_its_interval():
    seen, progress = np.array([10, 10, 40]), np.array([0.5, 0.5, 0.8], np.float32)
    band = np.array([[0.5, 0.7], [0.3, 0.6], [0.4, 1.0]], np.float32)
    q = progress + LOW_END_WEIGHT * (band[:, 0] - progress)  # 0.5, 0.45, 0.7
    np.testing.assert_allclose(remaining_frames(progress, seen, band), seen * (1 - q) / q, rtol=1e-6)
    assert remaining_frames(progress, seen, band)[0] == remaining_frames(progress, seen)[0] == 10  # lo = p
    assert (remaining_frames(progress, seen, band)[1:] > remaining_frames(progress, seen)[1:]).all()
    low, high = remaining_band(band, seen).T
    assert ((low <= remaining_frames(progress, seen, band)) & (remaining_frames(progress, seen, band) <= high)).all()


def test_action_errors_are_each_actions_mean_absolute_error_and_ogpe_their_mean():
    lengths = np.array([2, 4])
    preds = [np.array([0.5, 1.0]), np.array([0.0, 0.5, 0.75, 1.0])]  # truths (i+1)/L: [.5, 1] and [.25 … 1]
    errors = action_errors(preds, lengths)
    np.testing.assert_allclose(errors, [0.0, 0.0625])
    metrics = progress_metrics(preds, lengths)
    assert metrics["ogpe"] == pytest.approx(0.03125)
    assert metrics["ogpe_frames"] == pytest.approx(0.25 / 6)


def test_the_content_free_time_to_finish_is_the_mean_over_long_enough_actions():
    bayes = RemainingBayes(np.array([2, 4]))
    assert bayes(5).tolist() == [2.0, 1.0, 1.0, 0.0, 0.0]  # (1+3)/2, (0+2)/2, 4−3, 4−4, past the longest


def test_remaining_metrics_score_the_head_against_the_content_free_estimate():
    lengths = np.array([4, 10])
    exact = [np.arange(1, n + 1) / n for n in lengths]
    m = remaining_metrics(exact, [np.stack([p, p], axis=1) for p in exact], lengths, np.array([4, 10, 10]))
    assert m["model"] == pytest.approx(0.0, abs=1e-4) and m["bayes"] > 0
    assert m["length_bins"]["1-5"]["n"] == 1 and m["length_bins"]["6-10"]["n"] == 1


@pytest.mark.parametrize("teacher", [1, 2])
def test_a_head_with_a_teacher_learns_from_the_nets_trained_beside_it(tiny_data: Path, tmp_path: Path, teacher: int):
    """A teacher of one, the head's own size, teaches too: any teacher_members above 0 trains one."""
    import torch

    taught, _ = load_checkpoint(
        train_tiny(tiny_data, tmp_path / "taught", members=1, teacher_members=teacher, epochs=2)
    )
    alone, _ = load_checkpoint(train_tiny(tiny_data, tmp_path / "alone", members=1, epochs=2))
    assert taught.config["members"] == alone.config["members"] == 1  # only the head is kept: the served cell
    assert taught.state_dict().keys() == alone.state_dict().keys()
    # the same seed and batches: the teacher's progress is what made the weights differ
    assert not torch.allclose(taught.members[0].gru.weight_hh_l0, alone.members[0].gru.weight_hh_l0)


def test_a_teacher_without_a_say_leaves_the_head_as_if_it_trained_alone(tiny_data: Path, tmp_path: Path):
    """The teacher's gradients are clipped on their own: its norm never scales the head's steps."""
    import torch

    # a clip that acts at every step; one thread for both, so that no split of the threads moves the sums
    clip = {"epochs": 2, "grad_clip": 0.01, "distill_weight": 0.0, "threads": 1}
    threads = torch.get_num_threads()
    try:
        silent, _ = load_checkpoint(train_tiny(tiny_data, tmp_path / "silent", teacher_members=2, **clip))
        alone, _ = load_checkpoint(train_tiny(tiny_data, tmp_path / "alone", **clip))
    finally:
        torch.set_num_threads(threads)
    for name, value in alone.state_dict().items():
        assert torch.equal(silent.state_dict()[name], value), name


def edge_bias(model, data) -> tuple[float, float, float]:
    """The start's and the end's bias of the head's answers on ``data``, and its OGPE."""
    m = progress_metrics(predict_causal(model, data).progress, data.lengths)
    return m["start_mean"] - m["start_true"], m["end_mean"] - m["end_true"], m["ogpe"]


def test_a_hedging_heads_start_and_end_are_moved_towards_the_truth(calibrated):
    model, data = calibrated
    model.progress_offset.zero_()
    start, end, _ = edge_bias(model, data.val)
    assert start > START_LIMIT and end < -END_LIMIT  # two epochs: the head still hedges to the middle
    before = predict_causal(model, data.val).progress
    offsets = edge_offsets(model, data.val)
    fixed_start, fixed_end, _ = edge_bias(model, data.val)
    assert fixed_start < start and fixed_end > end
    assert max(abs(v) for v in offsets.values()) <= EDGE_STEPS.max()
    # every answer moved by its frames-seen bin's offset, and kept in [0, 1]
    table = model.progress_offset.numpy()
    after = predict_causal(model, data.val).progress
    for p, q in zip(before, after, strict=True):
        shift = table[np.minimum(np.arange(len(p)), OFFSET_STEPS - 1)]
        np.testing.assert_allclose(q, np.clip(p + shift, 0.0, 1.0), atol=1e-6)


def test_a_head_within_the_limits_keeps_its_answers(calibrated):
    model, data = calibrated
    offsets = edge_offsets(model, data.val, start_limit=1.0, end_limit=1.0)
    assert set(offsets.values()) == {0.0} and not model.progress_offset.any()


@pytest.mark.parametrize("limits", [(START_LIMIT, END_LIMIT), (0.0, 0.0)])
def test_the_edge_search_scores_the_answers_its_offsets_give(calibrated, limits):
    """The objective :func:`edge_search` reports is the OGPE of the moved answers plus EDGE_PENALTY × the bias
    left past the limits, recomputed here from the moved answers themselves (at the product's limits and at 0)."""
    model, data = calibrated
    model.progress_offset.zero_()
    answers, lengths = predict_causal(model, data.val).progress, data.val.lengths
    offsets, score = edge_search(answers, lengths, *limits)
    table = np.concatenate([np.full(hi - lo + 1, v) for (lo, hi), v in zip(OFFSET_BINS, offsets, strict=True)])
    moved = [np.clip(p + table[np.minimum(np.arange(len(p)), OFFSET_STEPS - 1)], 0.0, 1.0) for p in answers]
    m = progress_metrics(moved, lengths)
    start, end = m["start_mean"] - m["start_true"], m["end_mean"] - m["end_true"]
    excess = max(abs(start) - limits[0], 0.0) + max(-end - limits[1], 0.0)
    assert score == pytest.approx(m["ogpe"] + EDGE_PENALTY * excess, rel=1e-6)
    assert offsets.any()  # the two-epoch head hedges past both limits, so the search moved some bin
