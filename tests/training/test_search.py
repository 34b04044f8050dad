import json

import pytest

from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.config import TrainConfig
from progress_stream.training.search import run_search
from progress_stream.training.train import load_training_data


@pytest.mark.parametrize("trials", [3])
def test_a_tiny_bounded_search_logs_trials_and_keeps_the_best(tiny_data, tmp_path, trials):
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features")
    base = TrainConfig(epochs=1, hidden_dim=8, members=1, mlp_dim=4, teacher_members=0)
    best = run_search(base.replace(epochs=1), data, tmp_path, trials=trials, minutes=5)
    log = [json.loads(line) for line in (tmp_path / "search.jsonl").read_text().splitlines()]
    assert [t["trial"] for t in log] == list(range(trials))
    assert log[0]["config"]["hidden_dim"] == 8  # the first trial is the user's own config
    assert best["val_ogpe"] == min(t["val_ogpe"] for t in log)
    _, ckpt = load_checkpoint(tmp_path / "best.pt")
    assert ckpt.train_config.to_dict() == best["config"] == json.loads((tmp_path / "config.json").read_text())
    assert ckpt.metrics["val"]["ogpe"] == pytest.approx(best["val_ogpe"])


def test_the_time_budget_stops_the_search(tiny_data, tmp_path):
    data = load_training_data(tiny_data / "annotations.json", tiny_data / "features")
    run_search(
        TrainConfig(epochs=1, hidden_dim=8, members=1, teacher_members=0), data, tmp_path, trials=50, minutes=0.01
    )
    assert len((tmp_path / "search.jsonl").read_text().splitlines()) < 50
