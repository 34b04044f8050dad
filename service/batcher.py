"""The dynamic batcher: one inference call carries at most one frame of each of many streams.

A cycle takes up to ``max_batch`` ready streams, gathers the next ``≤ steps_per_cycle`` frames
of each one's oldest chunk into a preallocated ``(steps, rows, D)`` buffer, and runs that many
batched cell steps. Per-row Python work happens once per cycle, not once per frame. The steps
run on the event loop by default (measured faster on CPU: handing each cycle to a worker thread
cost more than it overlapped); ``in_thread`` moves them to a worker thread (long GPU calls).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.errors import InferenceFailed
from service.metrics import Metrics
from service.runtime import CellRuntime
from service.streams import Chunk, Stream, StreamTable

log = logging.getLogger(__name__)


@dataclass
class Cycle:
    """The rows of one cycle: streams, their chunks, how many frames each, and the gathered inputs."""

    streams: list[Stream]
    chunks: list[Chunk]
    slots: np.ndarray
    counts: np.ndarray
    steps0: np.ndarray
    state: np.ndarray
    emb: np.ndarray  # (K, rows, D) view of the preallocated buffer
    out: np.ndarray  # (K, rows) view of the preallocated buffer


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
        self.max_wait = max_wait_us / 1e6
        self.steps_per_cycle = steps_per_cycle
        self.queued_frames = 0
        self.cycle_lock = asyncio.Lock()  # held while a cycle runs: snapshots take it to see a still table
        self._ready: deque[Stream] = deque()
        self._wake = asyncio.Event()
        self._enough = asyncio.Event()  # set when `_target` streams are ready
        self._target = 0
        self._last_rows = 1
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference") if in_thread else None
        self._emb = np.zeros((steps_per_cycle, max_batch, runtime.embedding_dim), np.float32)
        self._out = np.zeros((steps_per_cycle, max_batch), np.float32)

    def enqueue(self, stream: Stream, chunk: Chunk) -> None:
        stream.pending.append(chunk)
        self.queued_frames += len(chunk.frames)
        if not stream.in_cycle and len(stream.pending) == 1:
            self._ready.append(stream)
            self._wake.set()
            if self._target and len(self._ready) >= self._target:
                self._enough.set()

    def drop(self, frames: int) -> None:
        """Forget ``frames`` queued frames of a removed stream."""
        self.queued_frames -= frames

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._ready:
                self._wake.clear()
                await self._wake.wait()
            if self.max_wait:
                await self._fill()
            async with self.cycle_lock:
                cycle = self._gather()
                if cycle is None:
                    continue
                try:
                    if self._executor is None:
                        self._execute(cycle)
                    else:
                        await loop.run_in_executor(self._executor, self._execute, cycle)
                except Exception as exc:  # a failed call must not stall every stream behind it
                    log.exception("inference failed for a batch of %d streams", len(cycle.streams))
                    self._fail(cycle, exc)
                    continue
                self._finish(cycle)

    async def _fill(self) -> None:
        """Wait up to ``max_wait`` for as many streams as the last batch had (they are usually on their
        way back with their next message); never wait when they are already here."""
        target = min(self.max_batch, self._last_rows)
        if len(self._ready) >= target:
            return
        self._target = target
        self._enough.clear()
        try:
            await asyncio.wait_for(self._enough.wait(), self.max_wait)
        except TimeoutError:
            pass
        finally:
            self._target = 0

    def _gather(self) -> Cycle | None:
        streams, chunks, counts = [], [], []
        while self._ready and len(streams) < self.max_batch:
            stream = self._ready.popleft()
            if stream.closed or not stream.pending:
                continue
            chunk = stream.pending[0]
            stream.in_cycle = min(len(chunk.frames) - chunk.pos, self.steps_per_cycle)
            streams.append(stream)
            chunks.append(chunk)
            counts.append(stream.in_cycle)
        if not streams:
            return None
        rows, k = len(streams), max(counts)
        self._last_rows = rows
        emb = self._emb[:k, :rows]
        slots = np.fromiter((s.slot for s in streams), np.int64, rows)
        steps0 = self.table.step[slots]
        if k == 1:  # one frame per row (the common case of 1-frame messages): one copy for all rows
            np.concatenate([c.frames[c.pos : c.pos + 1] for c in chunks], out=emb[0])
        else:
            for i, (chunk, n) in enumerate(zip(chunks, counts, strict=True)):
                emb[:n, i] = chunk.frames[chunk.pos : chunk.pos + n]
        resets = [i for i, c in enumerate(chunks) if c.reset and c.pos == 0]
        steps0[resets] = 0
        return Cycle(
            streams, chunks, slots, np.array(counts), steps0, self.table.state[slots], emb, self._out[:k, :rows]
        )

    def _execute(self, c: Cycle) -> None:
        """``K`` batched steps (on the loop, or the worker thread); rows whose chunk ran out drop out."""
        state = c.state
        rows, full = len(c.streams), int(c.counts.min())  # steps before the first row drops out
        for t in range(c.emb.shape[0]):
            active = np.flatnonzero(c.counts > t) if t >= full else None
            started = time.perf_counter()
            if active is None:
                c.out[t], state = self.runtime.step(c.emb[t], c.steps0 + t, state)
                self.metrics.batch_size.observe(rows)
            else:
                c.out[t, active], state[active] = self.runtime.step(
                    c.emb[t, active], c.steps0[active] + t, state[active]
                )
                self.metrics.batch_size.observe(len(active))
            self.metrics.inference_seconds.observe(time.perf_counter() - started)
        c.state = state

    def _finish(self, c: Cycle) -> None:
        table = self.table
        table.state[c.slots] = c.state
        table.step[c.slots] = c.steps0 + c.counts
        seqs = np.fromiter((ch.seq + ch.pos for ch in c.chunks), np.int64, len(c.chunks))
        table.record(c.slots, seqs, c.counts, c.out)
        done = int(c.counts.sum())
        self.queued_frames -= done
        self.metrics.frames.inc(done)
        out = c.out.T.copy()  # (rows, K), this cycle's own: each whole chunk's result is a view into it
        for i, (stream, chunk, n) in enumerate(zip(c.streams, c.chunks, c.counts.tolist(), strict=True)):
            stream.done_seq += n
            stream.in_cycle = 0
            if chunk.pos == 0 and n == len(chunk.frames):  # the whole chunk in this cycle: the common case
                result = out[i, :n]
            else:
                if chunk.out is None:
                    chunk.out = np.empty(len(chunk.frames), np.float32)
                chunk.out[chunk.pos : chunk.pos + n] = out[i, :n]
                result = chunk.out
            chunk.pos += n
            if chunk.pos == len(chunk.frames):
                if stream.pending and stream.pending[0] is chunk:
                    stream.pending.popleft()
                if not chunk.future.done():
                    chunk.future.set_result(result)
            if stream.closed:
                table.release(stream)
            elif stream.pending:
                self._ready.append(stream)

    def _fail(self, c: Cycle, exc: Exception) -> None:
        """Fail every waiting chunk of the cycle's streams: later chunks built on the failed one. The
        streams keep their state and go back to ``next_seq = processed``, from where clients resend."""
        for stream in c.streams:
            stream.in_cycle = 0
            self.queued_frames -= stream.queued
            for chunk in stream.pending:
                if not chunk.future.done():
                    chunk.future.set_exception(
                        InferenceFailed(f"inference failed ({exc}); resend from seq {stream.done_seq}", stream.done_seq)
                    )
            stream.pending.clear()
            stream.next_seq = stream.done_seq
            if stream.closed:
                self.table.release(stream)

    async def drain(self) -> None:
        """Wait until every accepted frame has been processed."""
        while self.queued_frames > 0 or self.cycle_lock.locked():
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
