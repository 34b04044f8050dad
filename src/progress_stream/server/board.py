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

from progress_stream.engine.streams import Stream, StreamTable


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
        """``{"rows": [changed or new rows, with fps], "removed": [ids]}`` since the last call. A stream
        that stopped is sent again about once a second (fps 0, idle time growing)."""
        now = time.monotonic()
        streams = [s for s in self.table.streams.values() if s.durable]
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
