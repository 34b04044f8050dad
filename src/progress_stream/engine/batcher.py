"""The dynamic batcher: one inference call carries at most one frame of each of many streams.

A cycle asks the stream table for a batch of up to ``max_batch`` ready streams, each with the next
``≤ steps_per_cycle`` frames of its oldest chunk gathered into a preallocated ``(steps, rows, D)``
buffer (and whole blocks, the usual gateway tick: :class:`~progress_stream.engine.ticks.Block`), runs that
many batched cell steps, and hands the batch back to the table. Per-row Python work
happens once per cycle, not once per frame. The steps run on the event loop by default (measured
faster on CPU: handing each cycle to a worker thread cost more than it overlapped); ``in_thread``
moves them to a worker thread (long GPU calls). The batcher owns no stream state: only the ready
queue, the buffers and the timing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from progress_stream.engine.metrics import Metrics
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import Batch, Stream, StreamTable
from progress_stream.engine.ticks import Block

log = logging.getLogger(__name__)


class Batcher:
    def __init__(
        self,
        runtime: CellRuntime,
        table: StreamTable,
        metrics: Metrics,
        max_batch: int,
        max_wait_us: int = 0,
        steps_per_cycle: int = 16,
        in_thread: bool = False,
    ):
        self.runtime = runtime
        self.table = table
        self.metrics = metrics
        self.max_batch = max_batch
        self.steps_per_cycle = steps_per_cycle
        self.max_wait = max_wait_us / 1e6
        self.cycle_lock = asyncio.Lock()  # held while a cycle runs: snapshots take it to see a still table
        self._ready: deque[Stream | Block] = deque()
        self._ready_rows = 0  # rows waiting in the ready queue (an estimate: a stream removed still counts)
        self._wake = asyncio.Event()
        self._enough = asyncio.Event()  # set when `_target` streams are ready
        self._target = 0
        self._last_rows = 1
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference") if in_thread else None
        self._emb = np.zeros((steps_per_cycle, max_batch, runtime.embedding_dim), np.float32)
        self._out = np.zeros((steps_per_cycle, max_batch), np.float32)
        self._band = np.zeros((steps_per_cycle, max_batch, 2), np.float32) if runtime.coverage is not None else None

    def ready(self, item: Stream | Block) -> None:
        """``item`` (a stream with frames waiting and in no batch, or a block) goes into the next cycles."""
        self._ready.append(item)
        self._ready_rows += 1 if isinstance(item, Stream) else len(item)
        self._wake.set()
        if self._target and self._ready_rows >= self._target:
            self._enough.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait:
                await self._fill()
            async with self.cycle_lock:
                batch = self.gather()
                if batch is None:
                    continue
                try:
                    if self._executor is None:
                        self.execute(batch)
                    else:
                        await loop.run_in_executor(self._executor, self.execute, batch)
                except Exception as exc:  # a failed call must not stall every stream behind it
                    log.exception("inference failed for a batch of %d streams", len(batch))
                    self.table.rewind(batch, exc)
                    continue
                self.finish(batch)

    async def _fill(self) -> None:
        """Wait up to ``max_wait`` for as many streams as the last batch had (they are usually on their
        way back with their next message); never wait when they are already here."""
        target = min(self.max_batch, self._last_rows)
        if self._ready_rows >= target:
            return
        self._target = target
        self._enough.clear()
        try:
            await asyncio.wait_for(self._enough.wait(), self.max_wait)
        except TimeoutError:
            pass
        finally:
            self._target = 0

    def gather(self) -> Batch | None:
        batch = self.table.gather(self._ready, self.max_batch, self._emb, self._out, self._band)
        rows = 0 if batch is None else len(batch)
        self._last_rows = rows or self._last_rows
        self._ready_rows = max(self._ready_rows - rows, len(self._ready)) if self._ready else 0
        return batch

    def execute(self, batch: Batch) -> None:
        """``K`` batched steps (on the loop, or the worker thread); rows whose chunk ran out drop out."""
        state = batch.state
        rows, full = len(batch), int(batch.counts.min())  # steps before the first row drops out
        for t in range(batch.emb.shape[0]):
            active = np.flatnonzero(batch.counts > t) if t >= full else None
            started = time.perf_counter()
            if active is None:
                batch.out[t], state, band = self.runtime.step(batch.emb[t], batch.steps0 + t, state)
                if band is not None:
                    batch.band[t] = band
                self.metrics.batch_size.observe(rows)
            else:
                batch.out[t, active], state[active], band = self.runtime.step(
                    batch.emb[t, active], batch.steps0[active] + t, state[active]
                )
                if band is not None:
                    batch.band[t, active] = band
                self.metrics.batch_size.observe(len(active))
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
        batch.state = state

    def finish(self, batch: Batch) -> None:
        self.metrics.frames.inc(int(batch.counts.sum()))
        for stream in self.table.complete(batch):
            self.ready(stream)

    async def drain(self) -> None:
        """Wait until every accepted frame has been processed."""
        while self.table.queued_frames > 0 or self.cycle_lock.locked():
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
