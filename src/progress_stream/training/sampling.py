"""Which frames a training step sees: stratified prefixes or whole actions, padded into batches."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from progress_stream.training.data import Dataset

BINS = ("early", "mid", "late")


def bin_frames(length: int, bin_index: int) -> np.ndarray:
    """0-based frames whose progress ``(i+1)/L`` lies in bin ``(k/3, (k+1)/3]``."""
    gt = np.arange(1, length + 1) / length
    lo, hi = bin_index / 3, (bin_index + 1) / 3
    return np.flatnonzero((gt > lo + 1e-9) & (gt <= hi + 1e-9))


def target_frames(length: int, n: int, rng: np.random.Generator, stratified: bool = True) -> np.ndarray:
    """``n`` target frames of an action; stratified cycles early, mid, late (each bin non-empty if L ≥ 3)."""
    if not stratified:
        return rng.integers(0, length, size=n)
    out = []
    for j in range(n):
        frames = bin_frames(length, j % 3)
        out.append(rng.choice(frames) if len(frames) else rng.integers(0, length))
    return np.array(out, dtype=np.int64)


def sample_prefixes(
    data: Dataset,
    rng: np.random.Generator,
    samples_per_video: int,
    frames_per_segment: int,
    min_segment_len: int,
    stratified: bool = True,
) -> list[tuple[int, int]]:
    """Per video: ``samples_per_video`` actions, each with ``frames_per_segment`` targets → (action, frame)."""
    by_video: dict[str, list[int]] = {}
    for i, a in enumerate(data.actions):
        if a.length >= min_segment_len:
            by_video.setdefault(a.handle, []).append(i)
    samples = []
    for indices in by_video.values():
        for a_idx in rng.choice(indices, size=samples_per_video):
            length = data.actions[a_idx].length
            samples += [(int(a_idx), int(t)) for t in target_frames(length, frames_per_segment, rng, stratified)]
    return samples


def _batches_by_length(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle, then sort within chunks of 50 batches so batches hold similar lengths; shuffle batches."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``(T_i, D)`` arrays into ``(B, T_max, D)`` plus the lengths."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    out = np.zeros((len(seqs), int(lengths.max()), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.from_numpy(out), lengths


def warped_lengths(lengths: np.ndarray, rng: np.random.Generator, warp: float) -> np.ndarray:
    """Each action's length replayed at a random speed ``exp(U(-warp, warp))`` (at least 1); ``lengths`` if 0.

    The warped action is a new instance of its class, longer or shorter, with its own ground truth
    ``(i+1)/L'``; this teaches the head that speed varies without changing what the content means.
    """
    if warp <= 0:
        return lengths
    return np.maximum(1, np.round(lengths / np.exp(rng.uniform(-warp, warp, len(lengths))))).astype(np.int64)


def replay(seq: np.ndarray, length: int) -> np.ndarray:
    """``seq`` replayed in ``length`` frames: frames repeated or dropped, order kept."""
    if length == len(seq):
        return seq
    return seq[((np.arange(length) + 0.5) * len(seq) / length).astype(np.int64)]


def feature_offset(seq: np.ndarray, rng: np.random.Generator, scale: np.ndarray | None) -> np.ndarray:
    """``seq`` plus one random vector ``N(0, scale²)`` added to every frame: the drift of an encoder between
    videos and cameras, which moves a whole action's embeddings without changing its phase."""
    if scale is None:
        return seq
    return seq + (rng.standard_normal(seq.shape[1]) * scale).astype(np.float32)


def dense_batches(
    data: Dataset,
    batch_size: int,
    rng: np.random.Generator,
    min_segment_len: int = 1,
    warp: float = 0.0,
    offset_scale: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Whole actions, optionally time-warped and offset: ``(x, lengths, labels)`` (:attr:`Dataset.label_ids`);
    the target of frame i is ``(i+1)/L``."""
    keep = np.flatnonzero(data.lengths >= min_segment_len)
    labels = torch.from_numpy(data.label_ids[0][keep])
    # batched by the replayed lengths, drawn first: a batch pads to its longest replay, not its longest action
    replayed = warped_lengths(data.lengths[keep], rng, warp)
    for batch in _batches_by_length(replayed, batch_size, rng):
        x, lengths = pad(
            [feature_offset(replay(data.features[keep[i]], replayed[i]), rng, offset_scale) for i in batch]
        )
        yield x, lengths, labels[batch]


def prefix_batches(
    data: Dataset, samples: list[tuple[int, int]], batch_size: int, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Prefixes ending at the sampled frames: ``(x, lengths, target, labels)``."""
    ids = data.label_ids[0]
    prefix_len = np.array([t + 1 for _, t in samples])
    for batch in _batches_by_length(prefix_len, batch_size, rng):
        seqs = [data.features[samples[i][0]][: samples[i][1] + 1] for i in batch]
        target = torch.tensor(
            [(samples[i][1] + 1) / data.actions[samples[i][0]].length for i in batch], dtype=torch.float32
        )
        x, lengths = pad(seqs)
        yield x, lengths, target, torch.from_numpy(ids[[samples[i][0] for i in batch]])
