"""The web board's view of the streams: rows read from the stream table, never from the frame path.

A row is what an operator looks at: the id, the last progress the server answered, the step within
the current action, frames processed, frames per second and idle time. Rows are computed with a few
vectorised reads of the table's arrays; a :class:`Watcher` turns successive reads into coalesced
updates (only the rows that changed, and the ids that left), at most once per ``period``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
import orjson
from fastapi import Request

from progress_stream.contract.replies import StreamRow
from progress_stream.engine.streams import Stream, StreamTable, Tenant
from progress_stream.server.wiring import Services

PERIOD_S = 0.1  # the board's updates are coalesced to at most 10 a second
CPU_SHARE = 0.02  # and slowed down so that a board never takes more than 2 % of the loop


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
    streams ``tenant`` may see."""

    table: StreamTable
    tenant: Tenant
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)  # id → (processed_seq, when)

    def update(self) -> dict:
        """``{"rows": [changed or new rows, with fps], "removed": [ids]}`` since the last call. A stream
        that stopped is sent again about once a second (fps 0, idle time growing)."""
        now = time.monotonic()
        streams = [s for s in self.table.streams.values() if s.durable and self.tenant.owns(s)]
        current = {s.id for s in streams}
        removed = [sid for sid in self.sent if sid not in current]
        for sid in removed:
            del self.sent[sid]
        due = [s for s in streams if self._due(s, now)]
        out = []
        for stream, row in zip(due, rows(self.table, due), strict=True):
            before = self.sent.get(stream.id)
            fps = (stream.done_seq - before[0]) / max(now - before[1], 1e-3) if before else 0.0
            row["fps"] = round(fps, 1)
            out.append(row)
            self.sent[stream.id] = (stream.done_seq, now)
        return {"rows": out, "removed": removed}

    def _due(self, stream: Stream, now: float) -> bool:
        before = self.sent.get(stream.id)
        return before is None or before[0] != stream.done_seq or now - before[1] > 1.0


async def events(request: Request, services: Services, tenant: Tenant) -> AsyncIterator[bytes]:
    """``snapshot`` with every row, then ``update`` events with what changed (each a
    :class:`~progress_stream.contract.replies.BoardUpdate`); ends when the client leaves or the server stops.
    Reads the table, never the frame path; with many streams (a tick reads all of them: about 0.25 ms per
    100 busy streams) the period grows to keep its share small."""
    watcher = Watcher(services.engine.table, tenant)
    started = time.perf_counter()
    yield sse("snapshot", watcher.update())
    spent = time.perf_counter() - started
    while not services.stopping and not await request.is_disconnected():
        await asyncio.sleep(max(PERIOD_S, spent / CPU_SHARE))
        started = time.perf_counter()
        update = watcher.update()
        spent = time.perf_counter() - started
        yield sse("update", update)


def sse(event: str, data: dict) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
