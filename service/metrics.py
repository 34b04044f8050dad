"""Prometheus metrics of one service instance (its own registry, so several can live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter("progress_frames", "Frames processed by the model", registry=r)
        self.batch_size = Histogram(
            "progress_batch_size", "Streams (rows) per inference call", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "progress_inference_seconds", "Duration of one inference call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.request_seconds = Histogram(
            "progress_request_seconds",
            "From receiving a frames request or message to its answer being ready",
            ["transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("progress_errors", "Errors answered, by code", ["code"], registry=r)
        self.evictions = Counter("progress_evictions", "Streams evicted after their idle TTL", registry=r)
        self.streams_active = Gauge("progress_streams_active", "Streams held", registry=r)
        self.queue_frames = Gauge("progress_queue_frames", "Frames accepted, waiting for inference", registry=r)
        self.model = Info("progress_model", "The model being served", registry=r)

    def watch(self, streams: Callable[[], float], queue: Callable[[], float]) -> None:
        """Gauges read at scrape time, so the hot path never touches them."""
        self.streams_active.set_function(streams)
        self.queue_frames.set_function(queue)
