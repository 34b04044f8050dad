"""One epoch of the real CLI on a tiny generated set: synth data → train → eval report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import load_annotations

PROGRESS = [sys.executable, "-m", "cli.main"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PROGRESS, *args], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--out", str(out), "--config", "configs/default.toml", "--set", "epochs=1")
    assert res.returncode == 0, res.stderr
    return out


def test_train_writes_a_best_checkpoint_with_its_config_and_metrics(trained):
    import torch

    ckpt = torch.load(trained / "best.pt", weights_only=False)
    assert ckpt["model_config"]["position_encoding"] == "log"
    assert ckpt["train_config"]["epochs"] == 1
    assert ckpt["data"]["embedding_dim"] == 16 and ckpt["data"]["length_median"] > 0
    assert 0 <= ckpt["metrics"]["val"]["ogpe"] <= 1


def test_eval_reports_the_model_beside_the_baselines(trained, tiny_data, tmp_path):
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("eval", "--checkpoint", str(trained / "best.pt"), *data, "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())["models"]
    assert set(metrics) == {"model", "constant_0.5", "length_bayes", "oracle"}
    assert metrics["oracle"]["ogpe"] == 0.0
    assert metrics["constant_0.5"]["ogpe_normalised"] == pytest.approx(0.0)
    for name in metrics:
        assert {"ogpe", "ogpe_frames", "start_mean", "end_mean"} <= set(metrics[name])
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "calibration.png").stat().st_size > 0
    assert "| length_bayes |" in (tmp_path / "report.md").read_text()


def test_split_train_handles_are_the_only_ones_read(tiny_data, tmp_path):
    videos = load_annotations(tiny_data / "annotations.json")
    train = [v.handle for v in videos[:8]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train, "test": [videos[-1].handle]}))
    features = tmp_path / "features"
    features.mkdir()
    for h in train:  # only the train handles' features exist: reading any other would fail
        (features / f"{h}.npy").symlink_to(tiny_data / "features" / f"{h}.npy")
    res = run(
        "train",
        "--annotations",
        str(tiny_data / "annotations.json"),
        "--features",
        str(features),
        "--split",
        str(split),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "epochs=1",
    )
    assert res.returncode == 0, res.stderr


def test_bad_config_key_is_a_clear_error(tiny_data, tmp_path):
    res = run(
        "train",
        "--annotations",
        str(tiny_data / "annotations.json"),
        "--features",
        str(tiny_data / "features"),
        "--out",
        str(tmp_path),
        "--set",
        "epoks=1",
    )
    assert res.returncode == 2 and "epoks" in res.stderr
