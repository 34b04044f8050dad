"""The engine: streams, ordering and retries, batching, eviction and snapshots. No web imports.

Transports (HTTP, WebSocket, a future gRPC front, tests, benchmarks) call :class:`Engine` and map
its :mod:`service.errors` to their own codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from pathlib import Path

import numpy as np

from service.batcher import Batcher
from service.errors import Overloaded, SeqConflict, StreamNotFound
from service.metrics import Metrics
from service.runtime import CellRuntime
from service.settings import Settings
from service.snapshot import identity, load_state, write_snapshot
from service.streams import Chunk, Stream, StreamTable

log = logging.getLogger(__name__)


class Engine:
    def __init__(self, runtime: CellRuntime, settings: Settings, metrics: Metrics | None = None):
        if settings.retained_window < settings.max_frames_per_message:
            raise ValueError("retained_window must be at least max_frames_per_message")
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.table = StreamTable(settings.max_streams, runtime.hidden_dim, settings.retained_window)
        self.batcher = Batcher(
            runtime,
            self.table,
            self.metrics,
            settings.max_batch,
            settings.max_wait_us,
            in_thread=settings.inference_in_thread,
        )
        self.metrics.watch(lambda: len(self.table), lambda: self.batcher.queued_frames)
        self.metrics.model.info({k: str(v) for k, v in self.model_summary().items()})
        self.accepting = True
        self.max_queue_frames = settings.max_queue_frames
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop  # set by start(): submit() runs on it

    def model_summary(self) -> dict:
        meta = self.runtime.metadata
        return {
            "embedding_dim": self.runtime.embedding_dim,
            "hidden_dim": self.runtime.hidden_dim,
            "position_encoding": meta["position_encoding"],
            "format_version": meta["format_version"],
            "checkpoint_sha256": meta.get("checkpoint_sha256", ""),
            "providers": ",".join(self.runtime.providers),
        }

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        state_file = self.settings.state_file
        if state_file is not None:
            self.restore(Path(state_file))
        self._tasks = [
            asyncio.create_task(self.batcher.run(), name="batcher"),
            asyncio.create_task(self._evict_loop(), name="evictor"),
        ]
        if state_file is not None:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(Path(state_file)), name="snapshots"))

    async def stop(self) -> None:
        """Stop accepting, finish every accepted frame, snapshot, stop the tasks."""
        self.accepting = False
        await self.batcher.drain()
        if self.settings.state_file is not None:
            await self.snapshot(Path(self.settings.state_file))
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.batcher.close()

    # --- streams -----------------------------------------------------------------------------
    def create(self, stream_id: str | None = None) -> tuple[Stream, bool]:
        """``(stream, created)``: an existing id answers its stream (creation is idempotent)."""
        if stream_id is not None and stream_id in self.table.streams:
            stream = self.table.streams[stream_id]
            stream.last_seen = time.monotonic()
            return stream, False
        return self.table.create(stream_id or secrets.token_hex(16)), True

    def get(self, stream_id: str) -> Stream:
        return self.table.get(stream_id)

    def delete(self, stream_id: str) -> None:
        stream = self.table.get(stream_id)
        self.batcher.drop(stream.queued)
        self.table.remove(stream)

    def describe(self, stream: Stream) -> dict:
        return {
            "stream_id": stream.id,
            "next_seq": stream.next_seq,
            "processed_seq": stream.done_seq,
            "step": int(self.table.step[stream.slot]),
            "pending_frames": stream.next_seq - stream.done_seq,
            "created_at": stream.created_at,
            "idle_s": round(time.monotonic() - stream.last_seen, 3),
        }

    # --- frames ------------------------------------------------------------------------------
    def submit(self, stream: Stream, seq: int, frames: np.ndarray, reset: bool = False) -> asyncio.Future:
        """Accept frames ``seq .. seq+n-1`` of ``stream`` (or find a retry's results); the future yields
        their progress. A caller that holds the stream across messages (a WebSocket) skips the lookup
        by id; a stream removed meanwhile answers :class:`StreamNotFound`.

        A retry may wait on the same future: callers that can be cancelled await it through
        ``asyncio.shield``. Cancelling never undoes accepted work: the frames are still processed.
        """
        if stream.closed:
            raise StreamNotFound(f"stream {stream.id!r} was deleted or evicted")
        stream.last_seen = time.monotonic()
        n = len(frames)
        if seq == stream.next_seq:
            if not self.accepting:
                raise Overloaded("the server is shutting down; reconnect and resume from next_seq", 1)
            if self.batcher.queued_frames + n > self.max_queue_frames:
                raise Overloaded(f"{self.batcher.queued_frames} frames already wait for inference; retry shortly")
            future = self._loop.create_future()
            self.batcher.enqueue(stream, Chunk(seq, frames, reset, future))
            stream.next_seq += n
            return future
        if seq < stream.next_seq and seq + n <= stream.next_seq:
            stored = self.table.replay(stream, seq, n)
            if stored is not None:
                future = self._loop.create_future()
                future.set_result(stored)
                return future
            for chunk in stream.pending:
                if chunk.seq == seq and len(chunk.frames) == n:
                    return chunk.future
            raise SeqConflict(
                f"seq {seq} (+{n} frames) is not a chunk this stream still retains (window "
                f"{self.table.window} frames); resume from next_seq {stream.next_seq}",
                stream.next_seq,
            )
        raise SeqConflict(f"seq {seq} does not continue this stream: expected {stream.next_seq}", stream.next_seq)

    async def frames(self, stream_id: str, seq: int, frames: np.ndarray, reset: bool = False) -> tuple[np.ndarray, int]:
        """Submit to the stream named ``stream_id`` and wait: ``(progress per frame, next_seq)``."""
        stream = self.table.get(stream_id)
        progress = await asyncio.shield(self.submit(stream, seq, frames, reset))
        return progress, stream.next_seq

    async def progress_once(self, frames: np.ndarray) -> np.ndarray:
        """Stateless: every frame of one action through a temporary stream."""
        # marked by its flag; its id has a character no client id may have, so it can never collide
        stream = self.table.create("~" + secrets.token_hex(8), durable=False)
        try:
            return await asyncio.shield(self.submit(stream, 0, frames))
        finally:
            if stream.id in self.table.streams:
                self.delete(stream.id)

    # --- housekeeping ------------------------------------------------------------------------
    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        ttl = self.settings.idle_ttl_s
        idle = [s for s in self.table.streams.values() if now - s.last_seen > ttl and not s.busy and not s.pending]
        for stream in idle:
            self.table.remove(stream)
        self.metrics.evictions.inc(len(idle))
        return len(idle)

    async def _evict_loop(self) -> None:
        period = min(1.0, self.settings.idle_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            if evicted := self.evict_idle():
                log.info("evicted %d idle streams", evicted)

    async def snapshot(self, path: Path) -> int:
        """Write every stream's processed state atomically; returns how many streams."""
        async with self.batcher.cycle_lock:
            streams = [s for s in self.table.streams.values() if s.durable]
            slots = np.array([s.slot for s in streams], np.int64)
            arrays = {
                "ids": np.array([s.id for s in streams], dtype=str),
                "done_seq": np.array([s.done_seq for s in streams], np.int64),
                "created_at": np.array([s.created_at for s in streams], np.float64),
                "state": self.table.state[slots],
                "step": self.table.step[slots],
                "outputs": self.table.outputs[slots],
            }
        await asyncio.to_thread(write_snapshot, path, arrays, self.snapshot_identity())
        return len(streams)

    def snapshot_identity(self) -> dict:
        """What a state file must match to be restored here (the model and the retained window)."""
        return identity(self.runtime.metadata.get("checkpoint_sha256", ""), self.table.window)

    def restore(self, path: Path) -> int:
        """Restore the state file at ``path`` if there is one; see :func:`service.snapshot.load_state`."""
        loaded = load_state(path, self.snapshot_identity(), self.settings.max_streams, self.settings.state_on_mismatch)
        if loaded is None:
            return 0
        arrays, _ = loaded
        for i, stream_id in enumerate(arrays["ids"]):
            stream = self.table.create(str(stream_id))
            stream.next_seq = stream.done_seq = int(arrays["done_seq"][i])
            stream.created_at = float(arrays["created_at"][i])
            self.table.state[stream.slot] = arrays["state"][i]
            self.table.step[stream.slot] = arrays["step"][i]
            self.table.outputs[stream.slot] = arrays["outputs"][i]
        log.info("restored %d streams from %s", len(arrays["ids"]), path)
        return len(arrays["ids"])

    async def _snapshot_loop(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_s)
            try:
                await self.snapshot(path)
            except OSError as exc:
                self.metrics.snapshot_failures.inc()
                log.error("snapshot to %s failed: %s", path, exc)
