"""The engine: streams, ordering and retries, batching, eviction and snapshots. No web imports.

Transports (HTTP, WebSocket, a future gRPC front, tests, benchmarks) call :class:`Engine` and map
its :mod:`progress_stream.contract.errors` to their own codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from progress_stream.contract.errors import (
    EngineError,
    Overloaded,
    SeqConflict,
    ServiceError,
    ShuttingDown,
    StreamIdTaken,
    StreamNotFound,
    StreamQuota,
)
from progress_stream.contract.replies import Estimates
from progress_stream.engine.batcher import Batcher
from progress_stream.engine.durability.snapshot import identity, load_state, write_snapshot
from progress_stream.engine.durability.store import RedisStore, StoreUnavailable
from progress_stream.engine.durability.takeover import SharedStreams
from progress_stream.engine.metrics import Metrics
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import (
    BLOCK,
    CLOSED,
    NEXT_SEQ,
    OPEN,
    PENDING,
    SLOT,
    SLOT_ARRAYS,
    Chunk,
    Stream,
    StreamTable,
    Tenant,
    chunk_digest,
    missing,
)
from progress_stream.engine.ticks import Block, Part, Tick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """What the engine needs, and nothing of the web layer (hosts, keys, origins, body limits).

    The web ``Settings`` derives one with ``engine_config()``; tests and benchmarks build their own.
    """

    max_streams: int = 10_000
    max_streams_per_key: int | None = None  # None: only max_streams bounds one key's streams
    idle_ttl_s: float = 600.0
    max_batch: int = 1024
    max_wait_us: int = 200
    inference_in_thread: bool = False
    max_queue_frames: int = 200_000
    retained_window: int = 512
    max_frames_per_message: int = 256
    state_file: Path | None = None
    state_on_mismatch: str = "fail"
    snapshot_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.retained_window < self.max_frames_per_message:
            raise ValueError("retained_window must be at least max_frames_per_message")


class Engine:
    def __init__(
        self,
        runtime: CellRuntime,
        config: EngineConfig,
        metrics: Metrics | None = None,
        store: RedisStore | None = None,
    ):
        """``store``: a shared store (Redis) that other replicas read too; see :mod:`.durability.takeover`."""
        self.runtime = runtime
        self.config = config
        self.metrics = metrics or Metrics()
        self.table = StreamTable(
            config.max_streams, runtime.hidden_dim, config.retained_window, band=runtime.coverage is not None
        )
        self.batcher = Batcher(
            runtime,
            self.table,
            self.metrics,
            config.max_batch,
            config.max_wait_us,
            in_thread=config.inference_in_thread,
        )
        self.metrics.watch(lambda: len(self.table), lambda: self.table.queued_frames)
        self.metrics.model.info({k: str(v) for k, v in self.model_summary().items()})
        self.shared = (
            SharedStreams(store, self.table, self.batcher, self.metrics, config.snapshot_interval_s) if store else None
        )
        self.accepting = True
        self.max_queue_frames = config.max_queue_frames
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop  # set by start(): submit() runs on it

    def model_summary(self) -> dict:
        meta = self.runtime.metadata
        return {
            "embedding_dim": self.runtime.embedding_dim,
            "hidden_dim": self.runtime.hidden_dim,
            "position_encoding": meta["position_encoding"],
            "format_version": meta["format_version"],
            "checkpoint_sha256": self.runtime.checkpoint,
            "providers": ",".join(self.runtime.providers),
            "coverage": self.runtime.coverage,
        }

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batcher, eviction, snapshots and store writes on the running loop (a state file is
        restored before, by :meth:`restore`, so that one that cannot be used fails the start early)."""
        self._loop = asyncio.get_running_loop()
        state_file = self.config.state_file
        self._tasks = [
            asyncio.create_task(self.batcher.run(), name="batcher"),
            asyncio.create_task(self._evict_loop(), name="evictor"),
        ]
        if state_file is not None:
            self._tasks.append(asyncio.create_task(self._snapshot_loop(Path(state_file)), name="snapshots"))
        if self.shared is not None:
            await self.shared.check()
            self._tasks.append(asyncio.create_task(self.shared.run(), name="store"))

    async def stop(self) -> bool:
        """Stop accepting, finish every accepted frame, snapshot, stop the tasks; whether the state file (if
        any) was written. A state file that cannot be written is logged and counted, and the shared store is
        still written: the one failure must not lose both."""
        self.accepting = False
        await self.batcher.drain()
        saved = True
        if self.config.state_file is not None:
            path = Path(self.config.state_file)
            try:
                await self.snapshot(path)
            except OSError as exc:
                saved = False
                self.metrics.snapshot_failures.inc()
                log.error("final snapshot to %s failed: %s", path, exc)
        if self.shared is not None:  # every stream, so the next owner continues exactly
            try:
                await self.shared.save(everything=True)
            except StoreUnavailable as exc:
                log.error("final write to the state store failed: %s", exc)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.batcher.close()
        if self.shared is not None:
            await self.shared.store.close()
        return saved

    # --- streams -----------------------------------------------------------------------------
    # Every call by id takes the ``tenant`` asking: a stream another tenant owns is not found (it reads
    # exactly as a missing one), and creating its id is StreamIdTaken. The check is made once, at the
    # lookup; a socket holds its stream and is never checked again.
    #
    # ``fps``, wherever a stream is opened, is its frame rate from then on (an open without one keeps it).
    def create(
        self, stream_id: str | None = None, tenant: Tenant = OPEN, fps: float | None = None
    ) -> tuple[Stream, bool]:
        """``(stream, created)``: an existing id answers its stream (creation is idempotent)."""
        if stream_id is not None and stream_id in self.table.streams:
            stream = self.table.streams[stream_id]
            if not tenant.owns(stream):
                raise taken(stream_id)
            self.reopened(stream, fps)
            return stream, False
        quota = self.config.max_streams_per_key
        if quota is not None and not tenant.admin and self.table.owned[tenant.name] >= quota:
            raise StreamQuota(f"this API key holds its maximum of {quota} streams; delete one or retry later")
        return self.table.create(stream_id or secrets.token_hex(16), owner=tenant.name, fps=fps), True

    def reopened(self, stream: Stream, fps: float | None) -> None:
        """An existing stream opened again: it is in use, at the rate this open names (if it names one)."""
        stream.last_seen = time.monotonic()
        if fps is not None:
            self.table.set_fps(stream, fps)

    async def find(
        self, stream_id: str, tenant: Tenant = OPEN, foreign: Callable[[str], EngineError] = missing
    ) -> Stream | None:
        """The stream held here, else taken over from the shared store; None if it is nowhere. A stored
        key that cannot be read is ``stream_unreadable`` to its owner, ``foreign(stream_id)`` to others."""
        stream = self.table.streams.get(stream_id)
        if stream is None and self.shared is not None:
            stream = await self.shared.take_over(stream_id, tenant, foreign)
        return stream

    async def open(
        self, stream_id: str | None = None, tenant: Tenant = OPEN, fps: float | None = None
    ) -> tuple[Stream, bool]:
        """Like :meth:`create`, but a stream held elsewhere (the shared store) is taken over, not made anew."""
        if stream_id is not None and (stream := await self.find(stream_id, tenant, taken)) is not None:
            if not tenant.owns(stream):
                raise taken(stream_id)
            self.reopened(stream, fps)
            return stream, False
        stream, created = self.create(stream_id, tenant, fps)  # one created by another request meanwhile: returned
        if created and self.shared is not None:
            await self.shared.created(stream)
        return stream, created

    async def get(self, stream_id: str, tenant: Tenant = OPEN) -> Stream:
        stream = await self.find(stream_id, tenant)
        if stream is None or not tenant.owns(stream):
            raise missing(stream_id)
        return stream

    async def delete(self, stream_id: str, tenant: Tenant = OPEN) -> None:
        stream = self.table.streams.get(stream_id)
        if stream is not None and not tenant.owns(stream):
            raise missing(stream_id)
        if stream is not None:
            self.table.remove(stream)
        owner = None if tenant.admin else tenant.name  # the store deletes only the caller's
        stored = self.shared is not None and await self.shared.forget(stream_id, owner)
        if stream is None and not stored:
            raise missing(stream_id)

    async def resubmit(
        self, stream: Stream, conflict: SeqConflict, seq: int, frames: np.ndarray, reset: bool
    ) -> asyncio.Future:
        """After a conflict: if the copy here is behind what the client sent and the shared store holds it
        further along, reload it and submit again; otherwise the conflict stands."""
        if self.shared is None or seq <= stream.next_seq or not await self.shared.catch_up(stream):
            raise conflict
        return self.submit(stream, seq, frames, reset)

    def fps_of(self, stream: Stream) -> float | None:
        """The frame rate ``stream`` was opened with (None: none, its answers carry no seconds)."""
        return self.table.fps_of(stream)

    def describe(self, stream: Stream) -> dict:
        return {
            "stream_id": stream.id,
            "next_seq": stream.next_seq,
            "processed_seq": stream.done_seq,
            "step": int(self.table.step[stream.slot]),
            "pending_frames": stream.next_seq - stream.done_seq,
            "fps": self.fps_of(stream),
            "created_at": stream.created_at,
            "idle_s": round(time.monotonic() - stream.last_seen, 3),
        }

    # --- frames ------------------------------------------------------------------------------
    def submit(self, stream: Stream, seq: int, frames: np.ndarray, reset: bool = False) -> asyncio.Future:
        """Accept frames ``seq .. seq+n-1`` of ``stream`` (or find a retry's results); the future yields
        their :class:`Estimates`. A caller that holds the stream across messages (a WebSocket) skips the lookup
        by id; a stream removed meanwhile answers :class:`StreamNotFound`.

        A retry may wait on the same future: callers that can be cancelled await it through
        ``asyncio.shield``. Cancelling never undoes accepted work: the frames are still processed.
        """
        answer = self.offer(stream, seq, frames, reset)
        if isinstance(answer, asyncio.Future):
            return answer
        future = self._loop.create_future()
        if isinstance(answer, Part):  # a retry of a chunk a tick sent, still pending
            tick = Tick(self._loop, 1)
            tick.follow(0, answer)
            tick.future.add_done_callback(lambda t: settle(future, t.result()[0]))
        else:
            future.set_result(answer)
        return future

    def offer(
        self, stream: Stream, seq: int, frames: np.ndarray, reset: bool, part: Part | None = None
    ) -> asyncio.Future | Part | Estimates:
        """The one acceptance rule of every transport: frames ``seq ..`` accepted (answered through
        ``part``, or a new future), a retry's stored answers, or the waiter of the same chunk still pending;
        raises the :class:`SeqConflict` (or other refusal) otherwise."""
        if stream.closed:
            raise StreamNotFound(f"stream {stream.id!r} was deleted or evicted")
        stream.last_seen = time.monotonic()
        n = len(frames)
        if seq == stream.next_seq:
            if not self.accepting:
                raise ShuttingDown("the server is shutting down; reconnect and resume from next_seq")
            if self.table.queued_frames + n > self.max_queue_frames:
                raise Overloaded(f"{self.table.queued_frames} frames already wait for inference; retry shortly")
            waiter = part or self._loop.create_future()
            if self.table.accept(stream, Chunk(seq, frames, reset, waiter)):
                self.batcher.ready(stream)
            return waiter
        if seq > stream.next_seq:
            raise SeqConflict(f"seq {seq} does not continue this stream: expected {stream.next_seq}", stream.next_seq)
        # seq was accepted before: a retry is answered only if it is the same chunk
        differs = self.table.difference(stream, seq, n, reset, chunk_digest(frames))
        if differs is not None:
            raise SeqConflict(f"seq {seq} {differs}; the stream continues at {stream.next_seq}", stream.next_seq)
        stored = self.table.replay(stream, seq, n)
        if stored is not None:
            return stored
        if stream.block is not None and stream.done_seq == seq:  # the frames a block holds, still unanswered
            return stream.block.waiter(stream)
        for chunk in stream.pending:
            if chunk.seq == seq:
                return chunk.future
        raise SeqConflict(
            f"seq {seq} (+{n} frames) is older than this stream retains (window {self.table.window} frames); "
            f"the stream continues at {stream.next_seq}",
            stream.next_seq,
        )

    async def tick(self, entries: list[tuple[Stream, int, np.ndarray, bool] | BaseException]) -> list[Any]:
        """One multiplexed message: each entry ``(stream, seq, frames, reset)``, or the exception that
        already refused it; answers, in order, the :class:`Estimates` or the exception per entry. One future
        for the whole message; an entry's refusal leaves the others as they are. A copy here that is behind
        what an entry sends catches up from the shared store first, as for a single stream."""
        tick = Tick(self._loop, len(entries))
        behind = []
        for i, entry in enumerate(entries):
            if isinstance(entry, BaseException):
                tick.settle(i, entry)
                continue
            try:
                self._offer_part(tick, i, entry)
            except SeqConflict as conflict:
                if self.shared is not None and entry[1] > entry[0].next_seq:
                    behind.append((i, entry, conflict))
                else:
                    tick.settle(i, conflict)
            except ServiceError as exc:
                tick.settle(i, exc)
        for i, entry, conflict in behind:  # rare: only after a stream moved between replicas
            try:
                if not await self.shared.catch_up(entry[0]):
                    raise conflict
                self._offer_part(tick, i, entry)
            except ServiceError as exc:
                tick.settle(i, exc)
        return await asyncio.shield(tick.future)  # a cancelled caller leaves its entries to their retries

    async def tick_block(
        self, streams: list[Stream], seqs: np.ndarray, frames: np.ndarray, resets: np.ndarray
    ) -> Estimates | list[Any]:
        """A multiplexed message whose entries all carry ``k`` frames: entry ``i`` is frames ``seqs[i] ..`` of
        ``streams[i]``, ``frames[i]`` of ``(entries, k, D)``, and ``resets[i]``. When every entry continues an
        idle stream (the steady state of a gateway) the message is one :class:`Block`: accepted, batched and
        answered as arrays, and the answer is every entry's :class:`Estimates` at once ``(entries, k)``.
        Otherwise (a retry, a conflict, a stream with chunks waiting, a full queue) it is :meth:`tick`'s answer
        per entry, and the rules are the same either way."""
        n, k = frames.shape[:2]
        slots = self.blockable(streams, seqs, n * k) if k <= self.batcher.steps_per_cycle else None
        if slots is not None:
            block = Block(self._loop, streams, slots, seqs, frames, resets)
            self.table.accept_block(block)
            self.batcher.ready(block)
            return await asyncio.shield(block.future)
        entries = zip(streams, seqs.tolist(), frames, resets.tolist(), strict=True)
        return await self.tick([(stream, seq, x, bool(reset)) for stream, seq, x, reset in entries])

    def blockable(self, streams: list[Stream], seqs: np.ndarray, frames: int) -> np.ndarray | None:
        """The streams' slots if the entries can be one block (the engine accepts, there is room, each stream
        appears once, and each is idle, with no chunk waiting and in no block, at the entry's seq); else None."""
        if not (self.accepting and 0 < len(streams) <= self.batcher.max_batch):
            return None
        if self.table.queued_frames + frames > self.max_queue_frames:
            return None
        n = len(streams)
        continues = list(map(NEXT_SEQ, streams)) == seqs.tolist()
        idle = not any(map(PENDING, streams)) and list(map(BLOCK, streams)).count(None) == n
        if not (continues and idle and not any(map(CLOSED, streams))):
            return None
        slots = np.fromiter(map(SLOT, streams), np.int64, n)
        return slots if len(set(slots.tolist())) == n else None

    def _offer_part(self, tick: Tick, i: int, entry: tuple[Stream, int, np.ndarray, bool]) -> None:
        part = tick.part(i)
        answer = self.offer(*entry, part)
        if answer is part:
            return
        if isinstance(answer, Estimates):
            tick.settle(i, answer)
        else:
            tick.follow(i, answer)

    async def frames(
        self, stream_id: str, seq: int, frames: np.ndarray, reset: bool = False, tenant: Tenant = OPEN
    ) -> tuple[Estimates, int]:
        """Submit to the stream named ``stream_id`` and wait: ``(each frame's answers, next_seq)``."""
        stream = await self.get(stream_id, tenant)
        try:
            future = self.submit(stream, seq, frames, reset)
        except SeqConflict as conflict:
            future = await self.resubmit(stream, conflict, seq, frames, reset)
        answers = await asyncio.shield(future)
        return answers, stream.next_seq

    async def progress_once(self, frames: np.ndarray) -> Estimates:
        """Stateless: every frame of one action through a temporary stream (no frame rate: no seconds)."""
        # marked by its flag; its id has a character no client id may have, so it can never collide
        stream = self.table.create("~" + secrets.token_hex(8), durable=False)
        try:
            return await asyncio.shield(self.submit(stream, 0, frames))
        finally:
            if self.table.streams.get(stream.id) is stream:
                self.table.remove(stream)

    # --- housekeeping ------------------------------------------------------------------------
    def evict_idle(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        ttl = self.config.idle_ttl_s
        idle = [s for s in self.table.streams.values() if now - s.last_seen > ttl and not s.busy and not s.pending]
        for stream in idle:
            self.table.remove(stream)
        self.metrics.evictions.inc(len(idle))
        return len(idle)

    async def _evict_loop(self) -> None:
        period = min(1.0, self.config.idle_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            if evicted := self.evict_idle():
                log.info("evicted %d idle streams", evicted)

    async def snapshot(self, path: Path) -> int:
        """Write every stream's processed state atomically; returns how many streams."""
        async with self.batcher.cycle_lock:
            streams = [s for s in self.table.streams.values() if s.durable]
            arrays = {
                "ids": np.array([s.id for s in streams], dtype=str),
                "owners": np.array([s.owner for s in streams], dtype=str),
                "done_seq": np.array([s.done_seq for s in streams], np.int64),
                "created_at": np.array([s.created_at for s in streams], np.float64),
                **self.table.rows_of(streams),
            }
        await asyncio.to_thread(write_snapshot, path, arrays, self.snapshot_identity())
        return len(streams)

    def snapshot_identity(self) -> dict:
        """What a state file must match to be restored here (the model and the retained window)."""
        return identity(self.runtime.checkpoint, self.table.window)

    def restore(self, path: Path) -> int:
        """Restore the state file at ``path`` if there is one; see :func:`.durability.snapshot.load_state`."""
        loaded = load_state(path, self.snapshot_identity(), self.config.max_streams, self.config.state_on_mismatch)
        if loaded is None:
            return 0
        arrays, _ = loaded
        for i, stream_id in enumerate(arrays["ids"]):
            rows = {name: arrays[name][i] for name in SLOT_ARRAYS}
            done_seq, created_at = int(arrays["done_seq"][i]), float(arrays["created_at"][i])
            self.table.restore(str(stream_id), done_seq, created_at, rows, str(arrays["owners"][i]))
        log.info("restored %d streams from %s", len(arrays["ids"]), path)
        return len(arrays["ids"])

    async def _snapshot_loop(self, path: Path) -> None:
        while True:
            await asyncio.sleep(self.config.snapshot_interval_s)
            try:
                await self.snapshot(path)
            except OSError as exc:
                self.metrics.snapshot_failures.inc()
                log.error("snapshot to %s failed: %s", path, exc)


def taken(stream_id: str) -> StreamIdTaken:
    return StreamIdTaken(f"stream id {stream_id!r} is taken: create with another id, or with none for a random one")


def settle(future: asyncio.Future, value: Estimates | BaseException) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
