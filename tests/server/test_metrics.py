"""The loop histogram as Prometheus reads it: cumulative ``le`` buckets, count and sum per label."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from progress_stream.engine.metrics import LATENCY_BUCKETS, Metrics


def test_loop_histogram_scrapes_as_a_prometheus_histogram():
    metrics = Metrics()
    ws = metrics.request_seconds.labels("ws")
    for value in (0.0005, 0.0006, 0.003, 10.0):  # on an edge, inside, inside, past the last edge
        ws.observe(value)
    metrics.request_seconds.labels("http").observe(0.02)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    family = families["progress_request_seconds"]
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("transport"), s.labels.get("le")): s.value for s in family.samples}
    assert samples["progress_request_seconds_bucket", "ws", "0.0005"] == 1  # le: the edge counts in its bucket
    assert samples["progress_request_seconds_bucket", "ws", "0.001"] == 2
    assert samples["progress_request_seconds_bucket", "ws", "0.005"] == 3
    assert samples["progress_request_seconds_bucket", "ws", str(LATENCY_BUCKETS[-1])] == 3
    assert samples["progress_request_seconds_bucket", "ws", "+Inf"] == 4
    assert samples["progress_request_seconds_count", "ws", None] == 4
    assert abs(samples["progress_request_seconds_sum", "ws", None] - 10.0041) < 1e-9
    assert samples["progress_request_seconds_count", "http", None] == 1
