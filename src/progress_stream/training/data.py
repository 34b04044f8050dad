"""Loading the GTCC layout: an annotation JSON plus ``features/<handle>.npy`` per video."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BACKGROUND_ACTIONS = frozenset({"0", "SIL", "background"})
#: The real EgoProceL timings in the GTCC layout, shipped with the package (see the docs' "Data" section):
#: the default annotations of ``progress synth``.
EGOPROCEL = Path(__file__).with_name("timings") / "egoprocel.json.gz"


class DataError(ValueError):
    """Bad annotations or features; the message names the file and the handle."""


@dataclass(frozen=True)
class Action:
    """One non-background action: frames ``start..end`` inclusive of video ``handle``."""

    handle: str
    label: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start + 1


@dataclass
class Video:
    """A video's annotated actions (background removed) and its feature file."""

    task: str
    handle: str
    actions: list[Action]
    segments: list[tuple[str, int, int]] = field(default_factory=list)


def ground_truth(length: int) -> np.ndarray:
    """Progress of an action of ``length`` frames: ``(i + 1) / L`` at its frame ``i``."""
    return np.arange(1, length + 1, dtype=np.float32) / np.float32(length)


def load_annotations(path: Path) -> list[Video]:
    """Parse a GTCC annotation JSON, plain or gzipped (task -> handles, hdl_actions, hdl_start_times, hdl_end_times)."""
    path = Path(path)
    try:
        raw = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read annotation JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected an object of tasks at the top level")
    videos = []
    for task, entry in raw.items():
        keys = ("handles", "hdl_actions", "hdl_start_times", "hdl_end_times")
        missing = [k for k in keys if k not in entry]
        if missing:
            raise DataError(f"{path}: task {task!r} lacks {', '.join(missing)}")
        handles = entry["handles"]
        columns = [entry[k] for k in keys[1:]]
        for i, handle in enumerate(handles):
            acts, starts, ends = (_per_handle(col, i, handle) for col in columns)
            if not len(acts) == len(starts) == len(ends):
                raise DataError(f"{path}: handle {handle!r}: actions, start and end times differ in length")
            segments = [(str(a), int(s), int(e)) for a, s, e in zip(acts, starts, ends, strict=True)]
            for label, s, e in segments:
                if e < s or s < 0:
                    raise DataError(f"{path}: handle {handle!r}: segment {label!r} has start {s} > end {e}")
            actions = [Action(handle, lab, s, e) for lab, s, e in segments if lab not in BACKGROUND_ACTIONS]
            videos.append(Video(task=task, handle=handle, actions=actions, segments=segments))
    return videos


def _per_handle(column: list | dict, index: int, handle: str) -> list:
    """GTCC stores per-handle columns as lists aligned with ``handles`` (some dumps use dicts)."""
    return column[handle] if isinstance(column, dict) else column[index]


def _hash_unit(handle: str) -> float:
    return int(hashlib.sha1(handle.encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_handles(
    videos: list[Video], split_file: Path | None = None, test_fraction: float = 0.2
) -> dict[str, list[str]]:
    """``{"train": [...], "test": [...]}`` from a split file, else a deterministic per-task split.

    A split file may also name the validation videos (``"val"``, some of its training videos), for when
    which videos validate matters: a held-out camera, or copies of one video that must stay together.
    """
    if split_file is None:
        return _hash_split(videos, test_fraction, "train", "test")
    split = json.loads(Path(split_file).read_text())
    for key in ("train", "test"):
        if key not in split:
            raise DataError(f"{split_file}: split has no {key!r} list")
    known = {v.handle for v in videos}
    unknown = sorted((set(split["train"]) | set(split["test"])) - known)
    if unknown:
        raise DataError(f"{split_file}: handles not in the annotations: {unknown[:5]}")
    handles = {"train": list(split["train"]), "test": list(split["test"])}
    if "val" in split:
        val, train = set(split["val"]), set(split["train"])
        problem = ""
        if val - train:
            problem = f"handles not in 'train': {sorted(val - train)[:5]}"
        elif not val:
            problem = "the list is empty"
        elif train <= val:
            problem = "it leaves no training video to fit"
        if problem:
            raise DataError(f"{split_file}: split key 'val' must name some of the training videos; {problem}")
        handles["val"] = list(split["val"])
    return handles


def validation_split(
    videos: list[Video], train: list[str], fraction: float = 0.15, val: list[str] | None = None
) -> dict[str, list[str]]:
    """Hold out whole videos of the training handles (per task) for validation: ``val`` if given (a split
    file's), else a hash of the handle picks ``fraction`` of each task's."""
    if val is not None:
        held = set(val)
        return {"fit": [h for h in train if h not in held], "val": list(val)}
    keep = set(train)
    return _hash_split([v for v in videos if v.handle in keep], fraction, "fit", "val")


def _hash_split(videos: list[Video], fraction: float, first: str, second: str) -> dict[str, list[str]]:
    by_task: dict[str, list[str]] = {}
    for v in videos:
        by_task.setdefault(v.task, []).append(v.handle)
    out: dict[str, list[str]] = {first: [], second: []}
    for handles in by_task.values():
        ordered = sorted(handles, key=_hash_unit)
        n_second = max(1, round(fraction * len(ordered))) if len(ordered) > 1 else 0
        out[second] += ordered[:n_second]
        out[first] += ordered[n_second:]
    return out


def load_features(features_dir: Path, video: Video, dim: int | None = None) -> np.ndarray:
    """Load and check ``<handle>.npy``; clip the video's annotations to its length (with a warning)."""
    path = Path(features_dir) / f"{video.handle}.npy"
    if not path.exists():
        raise DataError(f"{path}: missing feature file for handle {video.handle!r}")
    try:
        feats = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot load features of handle {video.handle!r}: {exc}") from exc
    if feats.dtype != np.float32:
        raise DataError(f"{path}: handle {video.handle!r}: dtype {feats.dtype}, expected float32")
    if feats.ndim != 2:
        raise DataError(f"{path}: handle {video.handle!r}: shape {feats.shape}, expected (T, D)")
    if dim is not None and feats.shape[1] != dim:
        raise DataError(
            f"{path}: handle {video.handle!r}: dimension {feats.shape[1]} differs from {dim} of other videos"
        )
    feats = np.ascontiguousarray(feats)
    if not np.isfinite(feats).all():
        raise DataError(f"{path}: handle {video.handle!r}: features contain NaN or inf")
    _clip_actions(video, feats.shape[0], path)
    return feats


def _clip_actions(video: Video, n_frames: int, path: Path) -> None:
    clipped = []
    for a in video.actions:
        if a.end < n_frames:
            clipped.append(a)
        elif a.start < n_frames:
            log.warning("%s: handle %r: action %s clipped to %d frames", path, video.handle, a.label, n_frames)
            clipped.append(Action(a.handle, a.label, a.start, n_frames - 1))
        else:
            log.warning("%s: handle %r: action %s starts past the features; dropped", path, video.handle, a.label)
    video.actions = clipped


@dataclass
class Dataset:
    """Actions with their feature slices, for the handles of one split."""

    dim: int
    actions: list[Action]
    features: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return np.array([a.length for a in self.actions], dtype=np.int64)

    @property
    def videos(self) -> np.ndarray:
        """Each action's video handle."""
        return np.array([a.handle for a in self.actions])

    @cached_property
    def label_ids(self) -> tuple[np.ndarray, int]:
        """Each action's label as an index into the set's distinct labels (sorted), and how many there are:
        computed once, read every epoch."""
        names, ids = np.unique([a.label for a in self.actions], return_inverse=True)
        return ids.astype(np.int64), len(names)


def load_dataset(videos: list[Video], features_dir: Path, handles: list[str], min_length: int = 1) -> Dataset:
    """Load the features of ``handles`` and cut them into per-action arrays."""
    wanted = set(handles)
    dim = None
    actions, feats = [], []
    for video in videos:
        if video.handle not in wanted:
            continue
        x = load_features(features_dir, video, dim)
        dim = x.shape[1]
        for a in video.actions:
            if a.length >= min_length:
                actions.append(a)
                feats.append(x[a.start : a.end + 1])
    if dim is None:
        raise DataError(f"{features_dir}: no videos loaded for the requested handles")
    return Dataset(dim=dim, actions=actions, features=feats)


def action_lengths(videos: list[Video], handles: list[str]) -> np.ndarray:
    """Lengths of the annotated actions of ``handles`` (no features needed)."""
    wanted = set(handles)
    return np.array([a.length for v in videos if v.handle in wanted for a in v.actions], dtype=np.int64)
