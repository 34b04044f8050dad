"""The web board's view of the streams: rows read from the stream table, never from the frame path.

A row is what an operator looks at: the id, the last progress the server answered, the step within
the current action, frames processed, frames per second and idle time. Rows are computed with a few
vectorised reads of the table's arrays; a :class:`Watcher` turns successive reads into coalesced
updates (only the rows that changed, and the ids that left), at most once per ``period``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from service.streams import Stream, StreamTable


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
        {
            "stream_id": s.id,
            "progress": float(last[i]) if s.done_seq else None,
            "step": int(steps[i]),
            "processed_seq": s.done_seq,
            "idle_s": round(now - s.last_seen, 1),
        }
        for i, s in enumerate(streams)
    ]


def listed(table: StreamTable, prefix: str = "") -> list[Stream]:
    """The streams a client may see (not the temporary ones of stateless requests), sorted by id."""
    return sorted((s for s in table.streams.values() if s.durable and s.id.startswith(prefix)), key=lambda s: s.id)


@dataclass
class Watcher:
    """One board's memory of what it was last sent, so each update carries only what changed."""

    table: StreamTable
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)  # id → (processed_seq, when)

    def update(self) -> dict:
        """``{"rows": [changed or new rows, with fps], "removed": [ids]}`` since the last call."""
        now = time.monotonic()
        streams = listed(self.table)
        current = {s.id for s in streams}
        removed = [sid for sid in self.sent if sid not in current]
        for sid in removed:
            del self.sent[sid]
        changed = [s for s in streams if s.id not in self.sent or self.sent[s.id][0] != s.done_seq]
        out = []
        for row in rows(self.table, changed):
            before = self.sent.get(row["stream_id"])
            fps = (row["processed_seq"] - before[0]) / max(now - before[1], 1e-3) if before else 0.0
            out.append({**row, "fps": round(fps, 1)})
            self.sent[row["stream_id"]] = (row["processed_seq"], now)
        idle = [s.id for s in streams if s.id not in {r["stream_id"] for r in out} and self._stale(s.id, now)]
        for sid in idle:  # a stream that stopped is sent again about once a second: fps 0, idle time growing
            self.sent[sid] = (self.sent[sid][0], now)
        out += [{**row, "fps": 0.0} for row in rows(self.table, [self.table.streams[i] for i in idle])]
        return {"rows": out, "removed": removed}

    def _stale(self, stream_id: str, now: float) -> bool:
        return now - self.sent[stream_id][1] > 1.0
