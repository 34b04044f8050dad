"""Report figures: progress curves of sample actions and calibration per model."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from progress_stream.training.data import Dataset, ground_truth
from progress_stream.training.evaluate import band_inside, frame_bins


def sample_actions(data: Dataset) -> dict[str, int]:
    """Index of a short, a medium and a long action (length quantiles 0.2, 0.6, 0.95)."""
    order = np.argsort(data.lengths, kind="stable")
    return {q: int(order[int(f * (len(order) - 1))]) for q, f in (("short", 0.2), ("medium", 0.6), ("long", 0.95))}


def curves_plot(data: Dataset, preds: dict[str, list[np.ndarray]], path: Path) -> None:
    picks = sample_actions(data)
    fig, axes = plt.subplots(1, len(picks), figsize=(5 * len(picks), 4), squeeze=False)
    for ax, (label, idx) in zip(axes[0], picks.items(), strict=True):
        length = int(data.lengths[idx])
        frames = np.arange(length)
        ax.plot(frames, ground_truth(length), "k--", label="true")
        for name, p in preds.items():
            if name not in ("oracle", "constant_0.5"):
                ax.plot(frames, p[idx], label=name, marker="." if length < 30 else None)
        ax.set(
            title=f"{label}: {data.actions[idx].label} ({length} frames)",
            xlabel="frame",
            ylabel="progress",
            ylim=(-0.02, 1.02),
        )
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def calibration_plot(data: Dataset, preds: dict[str, list[np.ndarray]], path: Path) -> None:
    gt = np.concatenate([ground_truth(int(n)) for n in data.lengths])
    decile = np.minimum((gt * 10).astype(int), 9)
    centres = (np.arange(10) + 0.5) / 10
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", label="ideal")
    for name, p in preds.items():
        flat = np.concatenate(p)
        means = [flat[decile == d].mean() if (decile == d).any() else np.nan for d in range(10)]
        ax.plot(centres, means, marker="o", label=name)
    ax.set(
        xlabel="true progress (decile centre)",
        ylabel="mean prediction",
        xlim=(0, 1),
        ylim=(0, 1),
        title="calibration",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def band_plot(data: Dataset, bands: list[np.ndarray], nominal: float, path: Path) -> None:
    """How well the band holds its nominal coverage: the share of frames inside it per true-progress decile
    and per action-length bin, beside the nominal line; and one long action's band around its curve."""
    gt = [ground_truth(int(n)) for n in data.lengths]
    inside, truth = band_inside(bands, data.lengths), np.concatenate(gt)
    decile = np.minimum((truth * 10).astype(int), 9)
    bins = [(name, sel) for name, sel, n in frame_bins(data.lengths) if n]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot((np.arange(10) + 0.5) / 10, [inside[decile == d].mean() for d in range(10)], marker="o")
    axes[0].set(xlabel="true progress (decile centre)", ylabel="share of frames inside the band", ylim=(0, 1))
    axes[1].bar([name for name, _ in bins], [inside[sel].mean() for _, sel in bins])
    axes[1].set(xlabel="action length (frames)", ylabel="share of frames inside the band", ylim=(0, 1))
    for ax in axes[:2]:
        ax.axhline(nominal, color="k", linestyle="--", label=f"nominal {nominal:.0%}")
        ax.legend(fontsize=8)
    idx = sample_actions(data)["long"]
    frames = np.arange(int(data.lengths[idx]))
    axes[2].fill_between(frames, bands[idx][:, 0], bands[idx][:, 1], alpha=0.3, label="band")
    axes[2].plot(frames, gt[idx], "k--", label="true")
    axes[2].set(xlabel="frame", ylabel="progress", ylim=(-0.02, 1.02), title=f"{data.actions[idx].label}")
    axes[2].legend(fontsize=8)
    fig.suptitle("the band: coverage on held-out videos")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
