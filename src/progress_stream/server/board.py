"""The web board's view of the streams: rows read from the stream table, never from the frame path.

A row is what an operator looks at: the id, the last progress the server answered, the step within
the current action, frames processed, frames per second and idle time. Rows are computed with a few
vectorised reads of the table's arrays; a :class:`Watcher` turns successive reads into coalesced
updates (only the rows that changed, and the ids that left), at most once per ``period``.

One :class:`Board` per server feeds every subscriber from one watcher: each subscriber used to cost its
own watcher (up to 2 % of the loop) and every connect a full snapshot (22 ms at 10,000 streams), so
~45 connects a second stalled the loop. Now a tick computes one update for all (each tenant subscribed
gets its streams' rows of it, encoded once), and those that joined since the last tick share one
snapshot a tenant; subscribers past ``max_subscribers`` get 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from progress_stream.contract.errors import TooManySubscribers
from progress_stream.contract.replies import StreamRow
from progress_stream.engine.streams import OPEN, Stream, StreamTable, Tenant

PERIOD_S = 0.1  # the board's updates are coalesced to at most 10 a second
CPU_SHARE = 0.02  # and slowed down so that the board never takes more than 2 % of the loop
#: Events a subscriber may leave unread before it is dropped (it reconnects and gets a snapshot).
MAX_BEHIND = 50


def rows(table: StreamTable, streams: list[Stream]) -> list[dict]:
    """One row per stream, in the order given."""
    if not streams:
        return []
    slots = np.fromiter((s.slot for s in streams), np.int64, len(streams))
    done = np.fromiter((s.done_seq for s in streams), np.int64, len(streams))
    last = table.outputs[slots, (done - 1) % table.window]
    steps = table.step[slots]
    now = time.monotonic()
    return [
        StreamRow.row(
            s.id, float(last[i]) if s.done_seq else None, int(steps[i]), s.done_seq, round(now - s.last_seen, 1)
        )
        for i, s in enumerate(streams)
    ]


def listed(table: StreamTable, tenant: Tenant, prefix: str = "") -> list[Stream]:
    """The streams ``tenant`` may see (not the temporary ones of stateless requests), sorted by id."""
    return sorted(
        (s for s in table.streams.values() if s.durable and tenant.owns(s) and s.id.startswith(prefix)),
        key=lambda s: s.id,
    )


@dataclass
class Watcher:
    """One board's memory of what it was last sent, so each update carries only what changed: of the
    streams ``tenant`` may see (the :class:`Board`'s watcher sees every stream, and each subscriber is
    sent its tenant's share)."""

    table: StreamTable
    tenant: Tenant = OPEN
    sent: dict[str, tuple[int, float, str]] = field(default_factory=dict)  # id → (processed_seq, when, owner)
    #: id → owner, of the rows the last update took away: the ids that left, and the ids deleted and
    #: created again by another key since (under their former owner; their new owner gets a new row)
    left: dict[str, str] = field(default_factory=dict)

    def update(self) -> dict:
        """``{"rows": [changed or new rows, with fps], "removed": [ids]}`` since the last call. A stream
        that stopped is sent again about once a second (fps 0, idle time growing)."""
        now = time.monotonic()
        streams = [s for s in self.table.streams.values() if s.durable and self.tenant.owns(s)]
        current = {s.id for s in streams}
        removed = [sid for sid in self.sent if sid not in current]
        self.left = {sid: self.sent.pop(sid)[2] for sid in removed}
        due = [s for s in streams if self._due(s, now)]
        out = []
        for stream, row in zip(due, rows(self.table, due), strict=True):
            before = self.sent.get(stream.id)
            if before is not None and before[2] != stream.owner:  # another key's stream under the same id
                self.left[stream.id] = before[2]
                before = None
            fps = (stream.done_seq - before[0]) / max(now - before[1], 1e-3) if before else 0.0
            row["fps"] = round(fps, 1)
            out.append(row)
            self.sent[stream.id] = (stream.done_seq, now, stream.owner)
        return {"rows": out, "removed": removed}

    def owner(self, stream_id: str) -> str:
        """The owner of a stream whose row was sent (and not removed since)."""
        return self.sent[stream_id][2]

    def _due(self, stream: Stream, now: float) -> bool:
        before = self.sent.get(stream.id)
        return before is None or before[0] != stream.done_seq or before[2] != stream.owner or now - before[1] > 1.0


class Board:
    """Every subscriber of one server's board, fed by one :class:`Watcher` (of every stream) while any
    is subscribed; each subscriber sees its tenant's streams only (the admin's: all).

    Each tick computes one update, and encodes it once for each tenant subscribed (its rows picked out
    of the update's by owner); those that joined since the previous tick get one ``snapshot`` a tenant
    (every row of its streams as of this tick) instead, so the full listing is built at most once a tick
    however many connect. Reads the table, never the frame path; with many streams (a tick reads all of
    them: about 0.25 ms per 100 busy streams) the period grows to keep the board's share of the loop
    within :data:`CPU_SHARE`, whatever the number of subscribers."""

    def __init__(self, table: StreamTable, max_subscribers: int, registry: CollectorRegistry):
        self.table = table
        self.max_subscribers = max_subscribers
        self.subscribers: list[asyncio.Queue[bytes | None]] = []
        self.joining: list[asyncio.Queue[bytes | None]] = []
        self.tenants: dict[asyncio.Queue[bytes | None], Tenant] = {}  # each subscriber's
        self.task: asyncio.Task | None = None
        subscribed = Gauge("progress_board_subscribers", "Clients of the live board", registry=registry)
        subscribed.set_function(lambda: len(self.subscribers) + len(self.joining))
        self.ticks = Counter(
            "progress_board_ticks", "Board updates computed (one a tick for every subscriber)", registry=registry
        )

    def subscribe(self, tenant: Tenant = OPEN) -> asyncio.Queue[bytes | None]:
        """A new subscriber's queue of events (None: it is dropped), of ``tenant``'s streams; raises
        :class:`TooManySubscribers`."""
        if len(self.subscribers) + len(self.joining) >= self.max_subscribers:
            raise TooManySubscribers(f"the board has its {self.max_subscribers} subscribers")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tenants[queue] = tenant
        self.joining.append(queue)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self.run())
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        for group in (self.subscribers, self.joining):
            if queue in group:
                group.remove(queue)
        self.tenants.pop(queue, None)

    async def run(self) -> None:
        watcher = Watcher(self.table)
        rows: dict[str, dict] = {}  # every row as last sent: what a snapshot holds
        try:
            while self.subscribers or self.joining:
                started = time.perf_counter()
                update = watcher.update()
                self.ticks.inc()
                for sid in update["removed"]:
                    rows.pop(sid, None)
                rows.update((row["stream_id"], row) for row in update["rows"])
                if self.subscribers:
                    self.send(self.subscribers, "update", partial(self.share, update=update, watcher=watcher))
                if self.joining:
                    joined, self.joining = self.joining, []
                    self.send(joined, "snapshot", partial(self.snapshot, rows=rows, watcher=watcher))
                    self.subscribers += [queue for queue in joined if queue in self.tenants]
                await asyncio.sleep(max(PERIOD_S, (time.perf_counter() - started) / CPU_SHARE))
        finally:
            self.task = None

    @staticmethod
    def snapshot(tenant: Tenant, rows: dict[str, dict], watcher: Watcher) -> dict:
        """Every row of ``tenant``'s streams (``rows``: every stream's, as last sent)."""
        if tenant.admin:
            return {"rows": list(rows.values()), "removed": []}
        return {"rows": [row for sid, row in rows.items() if watcher.owner(sid) == tenant.name], "removed": []}

    @staticmethod
    def share(tenant: Tenant, update: dict, watcher: Watcher) -> dict:
        """``tenant``'s part of ``update``: the rows of its streams, and the ids of its rows taken away."""
        if tenant.admin:
            return update
        return {
            "rows": [row for row in update["rows"] if watcher.owner(row["stream_id"]) == tenant.name],
            "removed": [sid for sid, owner in watcher.left.items() if owner == tenant.name],
        }

    def send(self, queues: list[asyncio.Queue[bytes | None]], event: str, data: Callable[[Tenant], dict]) -> None:
        """Put ``event`` on each queue, with ``data(tenant)`` for the queue's tenant (encoded once a tenant)."""
        encoded: dict[Tenant, bytes] = {}
        for queue in queues:
            tenant = self.tenants[queue]
            if tenant not in encoded:
                encoded[tenant] = sse(event, data(tenant))
            queue.put_nowait(encoded[tenant])
        lagging = [queue for queue in queues if queue.qsize() > MAX_BEHIND]
        for queue in lagging:  # a client that does not read, or a response that never started
            queue.put_nowait(None)
            self.unsubscribe(queue)


async def events(
    board: Board, queue: asyncio.Queue[bytes | None], stopping: Callable[[], bool]
) -> AsyncIterator[bytes]:
    """A subscriber's events: ``snapshot`` with every row (of its tenant's streams), then ``update``
    events with what changed (each a :class:`~progress_stream.contract.replies.BoardUpdate`); ends when
    the client leaves, falls too far behind, or the server stops."""
    try:
        while not stopping():
            event = await queue.get()
            if event is None:
                return
            yield event
    finally:
        board.unsubscribe(queue)


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
