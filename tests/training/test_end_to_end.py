"""One epoch of the real CLI on a tiny generated set: synth data → train → eval report."""

import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.config import MODEL_FIELDS, TrainConfig
from progress_stream.training.data import load_annotations
from progress_stream.training.report import band_table

PROGRESS = [sys.executable, "-m", "progress_stream.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PROGRESS, *args], capture_output=True, text=True, check=False)


DOCS = Path(__file__).resolve().parents[2] / "docs"
RECIPE = "<!-- generated: recipe -->"


def documented_default() -> dict:
    """The TOML block the docs give as the default recipe: docs/training.md's placeholder, rendered by
    the docs hook (docs/hooks.py) the way ``mkdocs build`` renders it."""
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    assert RECIPE in (DOCS / "training.md").read_text().splitlines()
    text = hooks.on_page_markdown(RECIPE, page=None, config=None, files=None)
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    return tomllib.loads(block)


def test_the_documented_default_recipe_is_train_configs_defaults():
    assert documented_default() == TrainConfig().to_dict()


@pytest.fixture(scope="module")
def training_run(tiny_data: Path, tmp_path_factory) -> tuple[Path, str]:
    """Plain ``progress train`` with no --config: the default recipe, one epoch of it; its folder and what
    it printed."""
    out = tmp_path_factory.mktemp("run")
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--out", str(out), "--set", "epochs=1")
    assert res.returncode == 0, res.stderr
    return out, res.stdout


@pytest.fixture(scope="module")
def trained(training_run: tuple[Path, str]) -> Path:
    return training_run[0]


def test_plain_train_builds_the_default_the_docs_document(trained):
    saved = json.loads((trained / "config.json").read_text())
    documented = documented_default()
    assert documented, "the docs' default-recipe block is empty"
    assert {k: saved[k] for k in documented if k != "epochs"} == {k: v for k, v in documented.items() if k != "epochs"}
    assert saved["epochs"] == 1  # the one override
    assert {k: v for k, v in saved.items() if k != "epochs"} == {
        k: v for k, v in TrainConfig().to_dict().items() if k != "epochs"
    }
    assert set(documented) >= set(MODEL_FIELDS) | {"loss", "weighted_loss", "time_warp", "regime"}


def test_train_writes_a_best_checkpoint_with_its_config_and_metrics(trained):
    model, ckpt = load_checkpoint(trained / "best.pt")
    assert (
        ckpt.model_config["position_encoding"] == "log"
        and model.state_dim
        == ckpt.model_config["members"] * ckpt.model_config["layers"] * ckpt.model_config["hidden_dim"]
    )
    assert ckpt.train_config.epochs == 1
    assert ckpt.data["embedding_dim"] == 16 and ckpt.data["length_median"] > 0
    assert 0 <= ckpt.metrics["val"]["ogpe"] <= 1 and ckpt.metrics["val"]["ratio_to_bayes"] > 0


def test_train_reports_the_band_on_held_out_halves_of_its_validation_videos(training_run):
    """The summary, the checkpoint and the log carry the same check; the tiny set's two validation videos
    make halves of one video, too few actions of any length to check, and the log says so."""
    out, printed = training_run
    summary = json.loads((out / "train_summary.json").read_text())
    _, ckpt = load_checkpoint(out / "best.pt")
    assert summary["band_halves"] == ckpt.metrics["band_halves"] == {}
    assert "band on held-out halves of the validation videos: no length bin holds enough actions" in printed


def test_a_mistyped_config_value_fails_with_the_key_named(tiny_data, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('weighted_loss = "false"\n')
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--out", str(tmp_path / "run"), "--config", str(bad))
    assert res.returncode == 2 and "'weighted_loss' must be bool" in res.stderr
    assert not (tmp_path / "run" / "best.pt").exists()


def test_two_teachers_at_once_are_refused_before_anything_is_written(tiny_data, tmp_path):
    """The default trains a second GRU as its teacher; asking for the mean teacher as well names both keys."""
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--out", str(tmp_path / "run"), "--set", "teacher_decay=0.99")
    assert res.returncode == 2
    assert "'teacher_members' (1) and 'teacher_decay' (0.99) each choose a teacher" in res.stderr
    assert not (tmp_path / "run").exists()


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
    report = (tmp_path / "report.md").read_text()
    assert "| length_bayes |" in report
    # the checkpoint checked no length bin on its validation halves (too few actions): the column says so
    bin_rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert "| validation halves |" in report and bin_rows and all(row[3] == "—" for row in bin_rows)
    first = bin_rows[0][0].removeprefix("| ")  # a length bin the test videos hold
    halves = {first: {"actions": 12.0, "median": 0.81, "low": 0.71, "high": 0.852}}
    rows = [line.split(" | ") for line in band_table(metrics, halves).splitlines() if line.startswith(f"| {first} |")]
    assert [row[3] for row in rows] == ["0.81 (0.71–0.85)"]


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


def test_one_validation_video_trains_and_says_its_halves_check_nothing(tiny_data, tmp_path):
    """A split file may name a single validation video: it cannot be halved, so the band is calibrated on it
    and the check on halves reports no length bin."""
    videos = load_annotations(tiny_data / "annotations.json")
    train = [v.handle for v in videos[:8]]
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train, "test": [videos[-1].handle], "val": train[:1]}))
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--split", str(split), "--out", str(tmp_path / "run"), "--set", "epochs=1")
    assert res.returncode == 0, res.stderr
    assert "band on held-out halves of the validation videos: no length bin holds enough actions" in res.stdout
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["band_halves"] == {}


def test_a_split_whose_val_is_not_training_videos_is_refused_before_training(tiny_data, tmp_path):
    videos = load_annotations(tiny_data / "annotations.json")
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps({"train": [v.handle for v in videos[:8]], "test": [videos[-1].handle], "val": [videos[-1].handle]})
    )
    data = ["--annotations", str(tiny_data / "annotations.json"), "--features", str(tiny_data / "features")]
    res = run("train", *data, "--split", str(split), "--out", str(tmp_path / "run"), "--set", "epochs=1")
    assert res.returncode == 2 and "split key 'val'" in res.stderr and videos[-1].handle in res.stderr
    assert not (tmp_path / "run").exists()


def test_synth_refuses_a_negative_draw_and_writes_nothing(tmp_path):
    res = run("synth", "--out", str(tmp_path / "data"), "--draw", "-1")
    assert res.returncode == 2 and "draw must be at least 0" in res.stderr
    assert not (tmp_path / "data").exists()


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


def test_phase_oracle_reads_its_own_features_and_the_summary_has_every_model(trained, tiny_data, tmp_path):
    data = ["--annotations", str(tiny_data / "annotations.json")]
    phase_run = tmp_path / "phase"
    res = run("train", *data, "--features", str(tiny_data / "phase"), "--out", str(phase_run), "--set", "epochs=1")
    assert res.returncode == 0, res.stderr
    report = tmp_path / "tiny-s16"
    res = run(
        "eval",
        "--checkpoint",
        str(trained / "best.pt"),
        "--compare",
        f"phase-oracle={phase_run / 'best.pt'}@{tiny_data / 'phase'}",
        *data,
        "--features",
        str(tiny_data / "features"),
        "--out",
        str(report),
    )
    assert res.returncode == 0, res.stderr
    details = json.loads((report / "metrics.json").read_text())["details"]
    assert details["phase-oracle"]["features"] == str(tiny_data / "phase") and details["phase-oracle"]["input_dim"] == 1
    res = run("summary", str(report))
    assert res.returncode == 0, res.stderr
    header, _, row = res.stdout.strip().splitlines()
    assert "| default |" in header and "phase-oracle" in header and "length_bayes" in header
    assert row.startswith("| tiny-s16 |") and ("| yes |" in row or "| no: " in row)
