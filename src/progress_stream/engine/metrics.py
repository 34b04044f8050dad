"""Prometheus metrics of one service instance (its own registry, so several can live in one process)."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: list[float]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


class LoopHistogram(Collector):
    """A labelled histogram for the per-message path, exported through prometheus-client's custom
    collector interface. The library's ``Histogram.observe`` takes a lock for the sum and one for the
    bucket and walks the buckets in Python (~0.6 µs); everything here runs on the event loop's one
    thread, so a bisect and two additions do (~0.15 µs)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float], registry):
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = sorted(buckets)
        self.children: dict[tuple[str, ...], LoopHistogramChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopHistogramChild:
        if values not in self.children:
            self.children[values] = LoopHistogramChild(self.bounds)
        return self.children[values]

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*map(floatToGoString, self.bounds), floatToGoString(math.inf)]
        for values, child in self.children.items():
            family.add_metric(
                list(values), list(zip(edges, itertools.accumulate(child.counts), strict=True)), child.sum
            )
        yield family


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
        self.request_seconds = LoopHistogram(
            "progress_request_seconds",
            "From receiving a frames request or message to its answer being ready",
            ["transport"],
            LATENCY_BUCKETS,
            r,
        )
        self.errors = Counter("progress_errors", "Errors answered, by code", ["code"], registry=r)
        self.evictions = Counter("progress_evictions", "Streams evicted after their idle TTL", registry=r)
        self.snapshot_failures = Counter(
            "progress_snapshot_failures", "Periodic state-file snapshots that could not be written", registry=r
        )
        self.store_writes = Counter("progress_store_writes", "Stream states written to the shared store", registry=r)
        self.store_refused = Counter(
            "progress_store_refused_writes",
            "Stream writes the shared store refused (its key holds a later seq, or is another owner's stream); "
            "the stream stays unstored",
            registry=r,
        )
        self.store_bad_keys = Counter(
            "progress_store_bad_keys",
            "Stream keys met in the shared store that cannot be read (the wrong type, a field that is not a "
            "number, a blob of the wrong length): skipped, never the whole round",
            registry=r,
        )
        self.store_errors = Counter("progress_store_errors", "Shared-store calls that failed", registry=r)
        self.store_restores = Counter("progress_store_restores", "Streams taken over from the shared store", registry=r)
        self.snapshot_lag = Gauge(
            "progress_snapshot_lag_seconds", "Seconds since every stream's state was last stored", registry=r
        )
        self.streams_active = Gauge("progress_streams_active", "Streams held", registry=r)
        self.queue_frames = Gauge("progress_queue_frames", "Frames accepted, waiting for inference", registry=r)
        self.model = Info("progress_model", "The model being served", registry=r)

    def watch(self, streams: Callable[[], float], queue: Callable[[], float]) -> None:
        """Gauges read at scrape time, so the hot path never touches them."""
        self.streams_active.set_function(streams)
        self.queue_frames.set_function(queue)
