"""The engine's side of a shared store: write what changed, take streams over, catch stale copies up.

* Every interval the streams whose processed seq moved since their last write are written, in one
  pipelined round trip, each consistent (read under the batcher's cycle lock). A failed write is
  retried with backoff (up to 30 s); meanwhile ``/readyz`` reports durability as degraded and the
  streams held keep being served.
* A request for a stream this replica does not hold looks it up (one round trip, never for streams
  it holds) and restores it: the client then resumes as after a restart (409 with ``expected_seq``).
* A copy held here that is behind what a client sends (the stream moved away and back) is reloaded
  from the store before answering, so no answer comes from a stale copy.
"""

from __future__ import annotations

import asyncio
import logging
import time

from progress_stream.contract.errors import StoreUnreachable
from progress_stream.engine.batcher import Batcher
from progress_stream.engine.durability.store import RedisStore, StoreUnavailable, StreamState
from progress_stream.engine.metrics import Metrics
from progress_stream.engine.streams import Stream, StreamTable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class SharedStreams:
    def __init__(self, store: RedisStore, table: StreamTable, batcher: Batcher, metrics: Metrics, interval_s: float):
        self.store = store
        self.table = table
        self.batcher = batcher
        self.metrics = metrics
        self.interval = interval_s
        self.degraded = False
        self.saved_at = time.monotonic()
        metrics.snapshot_lag.set_function(lambda: time.monotonic() - self.saved_at)

    async def check(self) -> None:
        """At start: an unreachable store (allowed by PROGRESS_STATE_REQUIRED=false) starts degraded."""
        try:
            await self.store.check()
        except StoreUnavailable as exc:
            self.degraded = True
            log.error("%s; serving with durability degraded", exc)

    async def created(self, stream: Stream) -> None:
        """Write a new stream at once, so that a replica lost before the next interval's write leaves it
        findable (its frames then come back by replay); a store that is down only degrades durability."""
        try:
            await self.save(streams=[stream])
        except StoreUnavailable as exc:
            log.error("%s; new stream %r not stored yet", exc, stream.id)

    async def save(self, everything: bool = False, streams: list[Stream] | None = None) -> int:
        """Write the streams that changed (or all of them, or ``streams``); raises StoreUnavailable."""
        whole_round = streams is None
        async with self.batcher.cycle_lock:
            if streams is None:
                streams = [
                    s for s in self.table.streams.values() if s.durable and (everything or s.done_seq != s.saved_seq)
                ]
            rows = self.table.rows_of(streams)
            states = [
                StreamState(s.id, s.done_seq, s.created_at, {name: r[i] for name, r in rows.items()}, s.owner)
                for i, s in enumerate(streams)
            ]
        try:
            await self.store.save(states)
        except StoreUnavailable:
            self.metrics.store_errors.inc()
            self.degraded = True
            raise
        for stream, state in zip(streams, states, strict=True):
            stream.saved_seq = state.done_seq
        self.metrics.store_writes.inc(len(states))
        if whole_round:  # every stream is stored as of now: the lag restarts
            self.saved_at = time.monotonic()
        self.degraded = False
        return len(states)

    async def run(self) -> None:
        delay = self.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.save()
                delay = self.interval
            except StoreUnavailable as exc:
                delay = min(MAX_BACKOFF_S, delay * 2)
                log.error("%s; retrying in %.0f s (the streams held are still served)", exc, delay)

    async def take_over(self, stream_id: str) -> Stream | None:
        """The stream restored from the store, or None if it is nowhere; 503 if the store cannot be asked."""
        try:
            state = await self.store.load(stream_id)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            self.degraded = True
            raise StoreUnreachable(f"{exc}: cannot tell whether stream {stream_id!r} exists; retry") from None
        if stream_id in self.table.streams:  # restored or created by another request meanwhile
            return self.table.streams[stream_id]
        if state is None:
            return None
        stream = self.table.restore(stream_id, state.done_seq, state.created_at, state.rows, state.owner)
        self.metrics.store_restores.inc()
        log.info("took stream %r over from the store at seq %d", stream_id, state.done_seq)
        return stream

    async def catch_up(self, stream: Stream) -> bool:
        """Reload an idle copy from the store if the store holds it further along; True if it moved."""
        if stream.busy or stream.pending:
            return False
        try:
            state = await self.store.load(stream.id)
        except StoreUnavailable:
            self.metrics.store_errors.inc()
            return False
        if state is None or state.done_seq <= stream.done_seq or stream.busy or stream.pending or stream.closed:
            return False
        self.table.overwrite(stream, state.done_seq, state.rows)
        self.metrics.store_restores.inc()
        return True

    async def forget(self, stream_id: str, owner: str | None = None) -> bool:
        """Delete the stream from the store if it is ``owner``'s (None: anyone's); whether it was there."""
        try:
            return await self.store.delete(stream_id, owner)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            raise StoreUnreachable(f"{exc}: the stream was not deleted from the store; retry") from None
