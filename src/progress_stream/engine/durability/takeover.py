"""The engine's side of a shared store: write what changed, take streams over, catch stale copies up.

* Every interval the streams whose processed seq moved since their last write are written, in one
  pipelined round trip, each consistent (read under the batcher's cycle lock). So are the streams
  used since the last round without moving (a retry answered from the retained window, a WebSocket
  reconnect): the write refreshes their key's TTL, which would otherwise expire while they are in
  use (and puts back a key that went missing). A failed write is
  retried with backoff (up to 30 s); meanwhile ``/readyz`` reports durability as degraded and the
  streams held keep being served.
* A write the store refuses (its key holds a later seq: another replica went further, or another
  model's deployment left it; or its key is another owner's: a replica created the same id for
  another API key) or skips (its key cannot be read) leaves that stream unstored: it is counted,
  logged once, retried every round, and ``/readyz`` reports durability as partial with the number of
  such streams. One stream's bad key never fails the round of the others.
* A stream whose key cannot be read is not taken over: its owner's requests (the admin's) answer
  ``stream_unreadable`` until it is deleted; another tenant's read as for any stream not theirs. A
  copy held here is not caught up from such a key, nor from another owner's: the conflict stands.
* A request for a stream this replica does not hold looks it up (one round trip, never for streams
  it holds) and restores it: the client then resumes as after a restart (409 with ``expected_seq``).
* A copy held here that is behind what a client sends (the stream moved away and back) is reloaded
  from the store before answering, so no answer comes from a stale copy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from progress_stream.contract.errors import EngineError, StoreUnreachable, StreamUnreadable
from progress_stream.engine.batcher import Batcher
from progress_stream.engine.durability.store import (
    BAD_KEY,
    NOT_OWNER,
    WRITTEN,
    BadKey,
    RedisStore,
    StoreUnavailable,
    StreamState,
)
from progress_stream.engine.metrics import Metrics
from progress_stream.engine.streams import OPEN, Stream, StreamTable, Tenant, missing

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
        #: streams held here whose last write the store refused (retried every round), and why
        self.unstored: dict[Stream, str] = {}
        self.saved_at = time.monotonic()
        self.round_at = time.monotonic()  # when the last write round that succeeded read the table
        metrics.snapshot_lag.set_function(lambda: time.monotonic() - self.saved_at)

    @property
    def unstored_count(self) -> int:
        """Streams held here whose state the store does not hold because it refused their writes."""
        return sum(not s.closed for s in self.unstored)

    @property
    def durability(self) -> str:
        """``degraded`` (the store cannot be written), ``partial`` (some streams' writes are refused) or ``ok``."""
        return "degraded" if self.degraded else ("partial" if self.unstored_count else "ok")

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
        """Write the streams that changed or were used since the last round, and those whose writes were
        refused (or all of them, or ``streams``); raises StoreUnavailable."""
        whole_round = streams is None
        async with self.batcher.cycle_lock:
            now = time.monotonic()
            if streams is None:
                used = self.round_at
                streams = [
                    s
                    for s in self.table.streams.values()
                    if s.durable
                    and (everything or s.done_seq != s.saved_seq or s.last_seen >= used or s in self.unstored)
                ]
            rows = self.table.rows_of(streams)
            states = [
                StreamState(s.id, s.done_seq, s.created_at, {name: r[i] for name, r in rows.items()}, s.owner)
                for i, s in enumerate(streams)
            ]
        try:
            outcomes = await self.store.save(states)
        except StoreUnavailable:
            self.metrics.store_errors.inc()
            self.degraded = True
            raise
        self.unstored = {s: why for s, why in self.unstored.items() if not s.closed}
        for stream, state, outcome in zip(streams, states, outcomes, strict=True):
            if outcome == WRITTEN:
                stream.saved_seq = state.done_seq
                self.stored(stream)
            else:
                self.refused(stream, state.done_seq, outcome)
        self.metrics.store_writes.inc(sum(outcome == WRITTEN for outcome in outcomes))
        if whole_round:  # the round went through: the lag restarts (refused streams are in unstored_count)
            self.saved_at = time.monotonic()
            self.round_at = now
        self.degraded = False
        return len(states)

    def stored(self, stream: Stream) -> None:
        """The store holds ``stream``'s state (written, or read from it)."""
        if self.unstored.pop(stream, None) is not None:
            log.info("stream %r is stored again at seq %d", stream.id, stream.saved_seq)

    def refused(self, stream: Stream, seq: int, outcome: int) -> None:
        """The store refused (or skipped, for a bad key) ``stream``'s write at ``seq``."""
        if outcome == BAD_KEY:
            self.metrics.store_bad_keys.inc()
            why = "its key cannot be read (the wrong type, or a seq that is not a number)"
        elif outcome == NOT_OWNER:
            self.metrics.store_refused.inc()
            why = "its key is another owner's stream (a replica created the same id for another API key)"
        else:
            self.metrics.store_refused.inc()
            why = "its key holds a later seq (another replica went further, or another deployment left it)"
        if self.unstored.get(stream) != why:
            log.warning("the state store refused stream %r at seq %d: %s; retried every round", stream.id, seq, why)
        self.unstored[stream] = why

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

    async def take_over(
        self, stream_id: str, tenant: Tenant = OPEN, foreign: Callable[[str], EngineError] = missing
    ) -> Stream | None:
        """The stream restored from the store, or None if it is nowhere; 503 if the store cannot be asked,
        ``stream_unreadable`` if its key cannot be read and is ``tenant``'s, else ``foreign(stream_id)``
        (what the caller answers for another tenant's stream: the key's existence is not told)."""
        try:
            state = await self.store.load(stream_id)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            self.degraded = True
            raise StoreUnreachable(f"{exc}: cannot tell whether stream {stream_id!r} exists; retry") from None
        except BadKey as exc:
            self.bad_key(exc)
            if not tenant.is_owner(exc.owner):
                raise foreign(stream_id) from None
            raise StreamUnreadable(f"{exc}; DELETE the stream to start it anew") from None
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
        except BadKey as exc:
            self.bad_key(exc)
            return False
        if state is None or state.done_seq <= stream.done_seq or stream.busy or stream.pending or stream.closed:
            return False
        if state.owner != stream.owner:  # another key's stream under the same id: never this one's state
            log.warning("stream %r in the store is another owner's; the copy held here is not caught up", stream.id)
            return False
        self.table.overwrite(stream, state.done_seq, state.rows)
        self.stored(stream)
        self.metrics.store_restores.inc()
        return True

    def bad_key(self, exc: BadKey) -> None:
        self.metrics.store_bad_keys.inc()
        log.warning("%s; left as it is", exc)

    async def forget(self, stream_id: str, owner: str | None = None) -> bool:
        """Delete the stream from the store if it is ``owner``'s (None: anyone's); whether it was there."""
        try:
            return await self.store.delete(stream_id, owner)
        except StoreUnavailable as exc:
            self.metrics.store_errors.inc()
            raise StoreUnreachable(f"{exc}: the stream was not deleted from the store; retry") from None
