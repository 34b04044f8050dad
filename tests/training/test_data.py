import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from progress_stream.training.data import DataError, load_annotations, load_dataset, load_features, split_handles
from progress_stream.training.train import load_training_data


@pytest.fixture
def copy(tiny_data: Path, tmp_path: Path) -> Path:
    shutil.copytree(tiny_data, tmp_path / "d")
    return tmp_path / "d"


def first_handle(root: Path) -> str:
    return load_annotations(root / "annotations.json")[0].handle


def test_background_is_dropped_and_lengths_are_inclusive(tiny_data):
    videos = load_annotations(tiny_data / "annotations.json")
    raw = json.loads((tiny_data / "annotations.json").read_text())
    task = next(iter(raw))
    acts, starts, ends = (raw[task][k][0] for k in ("hdl_actions", "hdl_start_times", "hdl_end_times"))
    expected = [e - s + 1 for a, s, e in zip(acts, starts, ends, strict=True) if a not in ("0", "SIL")]
    assert [a.length for a in videos[0].actions] == expected


def test_default_split_is_deterministic_per_task_80_20(tiny_data):
    videos = load_annotations(tiny_data / "annotations.json")
    a, b = split_handles(videos), split_handles(videos)
    assert a == b
    assert not set(a["train"]) & set(a["test"])
    assert len(a["test"]) == 2 and len(a["train"]) == 10  # 2 tasks x 6 handles, 1 test handle each


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.unlink(), "missing feature file"),
        (lambda p: np.save(p, np.load(p).astype(np.float64)), "dtype float64"),
        (lambda p: np.save(p, np.load(p)[None]), "expected \\(T, D\\)"),
        (lambda p: np.save(p, np.where(np.eye(*np.load(p).shape) > 0, np.nan, np.load(p)).astype(np.float32)), "NaN"),
        (lambda p: p.write_bytes(b"not numpy"), "cannot load"),
    ],
)
def test_bad_features_name_the_file_and_handle(copy, corrupt, message):
    handle = first_handle(copy)
    path = copy / "features" / f"{handle}.npy"
    corrupt(path)
    videos = load_annotations(copy / "annotations.json")
    with pytest.raises(DataError, match=message) as err:
        load_dataset(videos, copy / "features", [v.handle for v in videos])
    assert str(path) in str(err.value) and handle in str(err.value)


def test_dimension_mismatch_between_videos_is_an_error(copy):
    videos = load_annotations(copy / "annotations.json")
    second = copy / "features" / f"{videos[1].handle}.npy"
    np.save(second, np.load(second)[:, :8].copy())
    with pytest.raises(DataError, match=f"{videos[1].handle}.*dimension 8 differs from 16"):
        load_dataset(videos, copy / "features", [v.handle for v in videos[:2]])


def test_annotations_past_the_features_are_clipped_with_a_warning(copy, caplog):
    video = load_annotations(copy / "annotations.json")[0]
    path = copy / "features" / f"{video.handle}.npy"
    last = video.actions[-1]
    np.save(path, np.load(path)[: last.start + 1])
    with caplog.at_level(logging.WARNING):
        feats = load_features(copy / "features", video)
    assert video.actions[-1].end == feats.shape[0] - 1 and video.actions[-1].length == 1
    assert "clipped" in caplog.text


def test_bad_annotation_json_names_the_file(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({"task": {"handles": ["h"]}}))
    with pytest.raises(DataError, match=f"{bad}.*lacks hdl_actions"):
        load_annotations(bad)


def test_split_file_is_honoured_and_checked(tiny_data, tmp_path):
    videos = load_annotations(tiny_data / "annotations.json")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": [videos[0].handle], "test": [videos[1].handle]}))
    assert split_handles(videos, split) == {"train": [videos[0].handle], "test": [videos[1].handle]}
    split.write_text(json.dumps({"train": ["nope"], "test": []}))
    with pytest.raises(DataError, match="nope"):
        split_handles(videos, split)


def test_a_split_file_may_name_the_validation_videos(tiny_data, tmp_path):
    """Training validates on exactly the named videos and fits on the rest of the training videos."""
    videos = load_annotations(tiny_data / "annotations.json")
    handles = [v.handle for v in videos]
    train, val = handles[:-1], [handles[0], handles[2]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train, "test": handles[-1:], "val": val}))
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features", split)
    assert {a.handle for a in data.val.actions} == set(val)
    assert {a.handle for a in data.fit.actions} == set(train) - set(val)
    assert data.source["validation_videos"] == 2
    for bad, named in (([handles[-1]], handles[-1]), ([], "empty"), (train, "no training video to fit")):
        split.write_text(json.dumps({"train": train, "test": handles[-1:], "val": bad}))
        with pytest.raises(DataError, match=f"'val'.*{named}"):
            split_handles(videos, split)
