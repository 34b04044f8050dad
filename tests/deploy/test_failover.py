"""``make failover-smoke``'s scenario on the tiny model: real redis-server, nginx and three replicas."""

from __future__ import annotations

import shutil

import pytest

from scripts.failover_smoke import run

needs = pytest.mark.skipif(
    not (shutil.which("nginx") or shutil.which("/usr/sbin/nginx")) or not shutil.which("redis-server"),
    reason="needs Debian's nginx and redis-server (.ci/run installs them)",
)


@needs
def test_streams_survive_kill_9_restart_and_a_rolling_restart_exactly(tiny_model):
    summary = run(tiny_model, n_streams=300)
    assert summary["max_abs_diff"] <= 1e-5
    assert summary["streams_moved"] > 0
