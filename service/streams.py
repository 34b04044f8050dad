"""The stream table: per-stream bookkeeping plus the recurrent state in preallocated slot arrays."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from service.errors import StreamNotFound, TooManyStreams


@dataclass(eq=False, slots=True)
class Chunk:
    """Frames ``seq .. seq+n-1`` of one stream, accepted and waiting for (or under) inference."""

    seq: int
    frames: np.ndarray
    reset: bool
    future: asyncio.Future
    pos: int = 0  # frames of this chunk already processed
    out: np.ndarray | None = None  # progress so far, for a chunk that spans several cycles


@dataclass(eq=False, slots=True)
class Stream:
    id: str
    slot: int
    next_seq: int = 0  # frames accepted
    done_seq: int = 0  # frames processed (their outputs are in the table)
    created_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    pending: deque[Chunk] = field(default_factory=deque)
    in_cycle: int = 0  # frames of it in the batch now under inference
    closed: bool = False  # removed from the table (a batch still holding it frees its slot when done)
    durable: bool = True  # snapshotted; False for the temporary stream of a stateless request

    @property
    def busy(self) -> bool:
        return self.in_cycle > 0

    @property
    def queued(self) -> int:
        """Accepted frames not yet processed and not in the running cycle."""
        return sum(len(c.frames) - c.pos for c in self.pending) - self.in_cycle


#: The per-slot arrays of :class:`StreamTable`: what a snapshot keeps of each stream besides its counters.
SLOT_ARRAYS = ("state", "step", "outputs", "chunk_seq", "chunk_shape", "chunk_digest")


def chunk_digest(frames: np.ndarray) -> int:
    """64 bits of BLAKE2b over a chunk's float32 bytes: a retry must carry the same data."""
    return int.from_bytes(hashlib.blake2b(np.ascontiguousarray(frames), digest_size=8).digest(), "little")


class StreamTable:
    """Streams by id; hidden state, step, the last ``window`` outputs and the chunks accepted over them
    live in arrays indexed by slot (a chunk is recorded at the position of its first frame)."""

    def __init__(self, capacity: int, hidden_dim: int, window: int):
        self.capacity = capacity
        self.window = window
        self.state = np.zeros((capacity, hidden_dim), np.float32)
        self.step = np.zeros(capacity, np.int64)
        self.outputs = np.zeros((capacity, window), np.float32)
        # seq + 1 of the chunk that starts at this position (0: none), its frames × 2 + reset, its digest
        self.chunk_seq = np.zeros((capacity, window), np.int64)
        self.chunk_shape = np.zeros((capacity, window), np.int32)
        self.chunk_digest = np.zeros((capacity, window), np.uint64)
        self.streams: dict[str, Stream] = {}
        self._free = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.streams)

    def create(self, stream_id: str, durable: bool = True) -> Stream:
        if not self._free:
            raise TooManyStreams(f"the server holds its maximum of {self.capacity} streams; retry later")
        slot = self._free.pop()
        self.state[slot] = 0.0
        self.step[slot] = 0
        self.chunk_seq[slot] = 0
        stream = Stream(stream_id, slot, durable=durable)
        self.streams[stream_id] = stream
        return stream

    def get(self, stream_id: str) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise StreamNotFound(f"no stream {stream_id!r} (never created, deleted or evicted)") from None

    def remove(self, stream: Stream) -> None:
        """Forget ``stream``; its waiting chunks fail, its slot is freed once no batch holds it."""
        self.streams.pop(stream.id, None)
        for chunk in stream.pending:
            if not chunk.future.done():
                chunk.future.set_exception(StreamNotFound(f"stream {stream.id!r} was deleted"))
        stream.pending.clear()
        stream.closed = True
        if not stream.busy:
            self._free.append(stream.slot)

    def release(self, stream: Stream) -> None:
        self._free.append(stream.slot)

    def record(self, slots: np.ndarray, seqs: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
        """Keep ``out[t, i]`` (frame ``seqs[i] + t`` of the stream in ``slots[i]``) for ``t < counts[i]``."""
        full = int(counts.min())
        for t in range(out.shape[0]):
            rows = slice(None) if t < full else np.flatnonzero(counts > t)
            self.outputs[slots[rows], (seqs[rows] + t) % self.window] = out[t, rows]

    def remember(self, stream: Stream, seq: int, n: int, reset: bool, digest: int) -> None:
        """Record an accepted chunk, so that a retry of it can be told from a different chunk."""
        pos = seq % self.window
        self.chunk_seq[stream.slot, pos] = seq + 1
        self.chunk_shape[stream.slot, pos] = 2 * n + reset
        self.chunk_digest[stream.slot, pos] = digest

    def difference(self, stream: Stream, seq: int, n: int, reset: bool, digest: int) -> str | None:
        """``None`` if frames ``seq..`` are the chunk accepted at ``seq``; otherwise what differs."""
        pos = seq % self.window
        if self.chunk_seq[stream.slot, pos] != seq + 1:
            return "is not the first frame of a chunk this stream still retains (an overlap, or too old)"
        accepted_n, accepted_reset = divmod(int(self.chunk_shape[stream.slot, pos]), 2)
        if accepted_n != n:
            return f"was accepted with {accepted_n} frames, not {n}"
        if accepted_reset != reset:
            return f"was accepted with reset {bool(accepted_reset)}, not {reset}"
        if int(self.chunk_digest[stream.slot, pos]) != digest:
            return "was accepted with different embeddings"
        return None

    def replay(self, stream: Stream, seq: int, n: int) -> np.ndarray | None:
        """Stored outputs of frames ``seq .. seq+n-1`` if all are processed and still retained."""
        if seq >= stream.done_seq - self.window and seq + n <= stream.done_seq:
            return self.outputs[stream.slot, np.arange(seq, seq + n) % self.window].copy()
        return None
