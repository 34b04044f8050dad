"""The cluster smoke test: two real replicas and a real nginx on 127.0.0.1."""

from __future__ import annotations

import shutil

import pytest

from scripts.cluster_smoke import run


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx not installed (.ci/run installs it)")
def test_streams_stay_on_one_replica_and_survive_a_replica_restart(tiny_model):
    summary = run(tiny_model, n_streams=60)
    assert summary["streams"] == 60 and min(summary["per_replica"]) > 0
    assert summary["restarted_replica_streams"] > 0 and summary["max_abs_diff"] <= 1e-5
