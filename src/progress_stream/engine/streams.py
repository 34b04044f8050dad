"""The stream table, the one owner of stream state: per-stream bookkeeping, the recurrent state in
preallocated slot arrays, and every transition of both (accept, gather a batch, complete it, rewind
it, remove a stream). The batcher only decides when and runs the model; the engine only checks.

Transitions are synchronous and unit-tested as such (``tests/service/test_streams.py``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import operator
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from progress_stream.contract.errors import InferenceFailed, StreamNotFound, TooManyStreams
from progress_stream.contract.replies import Estimates
from progress_stream.engine.ticks import Block, Part


@dataclass(eq=False, slots=True)
class Chunk:
    """Frames ``seq .. seq+n-1`` of one stream, accepted and waiting for (or under) inference."""

    seq: int
    frames: np.ndarray
    reset: bool
    future: asyncio.Future | Part  # answered through this: a message's future, or a tick's part
    pos: int = 0  # frames of this chunk already processed
    parts: list[Estimates] | None = None  # the answers so far, for a chunk that spans several cycles


#: The owner of a stream made without a key, with the single ``PROGRESS_API_KEY``, or stored before streams
#: had owners (a version-2 state file, a store hash without ``owner``).
DEFAULT_OWNER = "default"


def missing(stream_id: str) -> StreamNotFound:
    """The one answer for a stream that is not there, or not the caller's: the two read the same."""
    return StreamNotFound(f"no stream {stream_id!r} (never created, deleted or evicted)")


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who asks: the name of an API key (stored as a stream's owner, never the key). ``admin`` sees and
    may delete every stream; so does everyone when the server has no key at all (:data:`OPEN`)."""

    name: str
    admin: bool = False

    def owns(self, stream: Stream) -> bool:
        return self.is_owner(stream.owner)

    def is_owner(self, owner: str) -> bool:
        """Whether a stream owned by ``owner`` (a key's name) is this tenant's."""
        return self.admin or owner == self.name


#: The caller of a server without keys: no one owns anything apart from anyone else.
OPEN = Tenant(DEFAULT_OWNER, admin=True)


@dataclass(eq=False, slots=True)
class Stream:
    id: str
    slot: int
    owner: str = DEFAULT_OWNER  # the name of the key that created it
    next_seq: int = 0  # frames accepted
    done_seq: int = 0  # frames processed (their outputs are in the table)
    created_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.monotonic)
    pending: deque[Chunk] = field(default_factory=deque)
    in_cycle: int = 0  # frames of its oldest chunk in the batch now under inference
    block: Block | None = None  # the block holding its next frames, until that block is answered
    closed: bool = False  # removed from the table (a batch still holding it frees its slot when done)
    durable: bool = True  # snapshotted; False for the temporary stream of a stateless request
    saved_seq: int = -1  # done_seq at its last write to a shared store (-1: never written)

    @property
    def busy(self) -> bool:
        """Frames of it are in a batch or a block: its slot stays taken until they are answered."""
        return self.in_cycle > 0 or self.block is not None

    @property
    def queued(self) -> int:
        """Accepted frames not yet processed and not in the running cycle."""
        return sum(len(c.frames) - c.pos for c in self.pending) - self.in_cycle


#: What the hot path reads of every stream of a message or a batch (read in C by ``map``, not in a Python loop).
NEXT_SEQ, PENDING, BLOCK, CLOSED, SLOT = map(operator.attrgetter, ("next_seq", "pending", "block", "closed", "slot"))


@dataclass(eq=False)
class Batch:
    """The rows of one cycle: streams, how many frames each, the seq of each row's first frame and the
    gathered inputs. The first ``len(chunks)`` rows are single streams' chunks; ``blocks`` follow, each
    from the row it starts at.

    ``emb``, ``out`` (progress) and ``band`` (None for a cell without one) are ``(steps, rows, …)`` views
    of the batcher's preallocated buffers.
    """

    streams: list[Stream]
    chunks: list[Chunk]
    blocks: list[tuple[int, Block]]
    slots: np.ndarray
    counts: np.ndarray
    seqs: np.ndarray
    steps0: np.ndarray
    state: np.ndarray
    emb: np.ndarray
    out: np.ndarray
    band: np.ndarray | None

    def __len__(self) -> int:
        return len(self.streams)


#: Slot arrays that came with the band and the time to finish: state files before version 4 and store
#: blobs written before lack them (:func:`fill_added` makes them up).
ADDED_ARRAYS = ("bands", "seen", "fps")
#: The per-slot arrays of :class:`StreamTable`: what a snapshot keeps of each stream besides its counters.
SLOT_ARRAYS = ("state", "step", "outputs", "chunk_seq", "chunk_shape", "chunk_digest", *ADDED_ARRAYS)


def fill_added(rows: dict[str, np.ndarray], done_seq: np.ndarray | int) -> None:
    """Give rows stored without the :data:`ADDED_ARRAYS` (one stream's, or ``(streams, …)``) their values:
    no frame rate, no band (the servers that wrote them served only cells without one), and each retained
    frame's place in its action from the stream's step, which counts from the last reset: exact for the frames
    since, and 0 (not retained: a resend of it is refused as too old) for those before it."""
    outputs = rows["outputs"]
    window = outputs.shape[-1]
    age = (np.asarray(done_seq)[..., None] - 1 - np.arange(window)) % window  # frames processed since each
    rows["seen"] = np.maximum(np.asarray(rows["step"])[..., None] - age, 0)
    rows["bands"] = np.zeros((*outputs.shape, 2), np.float32)
    rows["fps"] = np.full(outputs.shape[:-1], np.nan)


def chunk_digest(frames: np.ndarray) -> int:
    """A chunk's 64-bit digest: a retry must carry the same data (see :func:`chunk_digests`)."""
    words = frames.view("<u4").ravel().astype(np.uint64)
    return int(words.dot(keys_for(len(words))))


def chunk_digests(chunks: np.ndarray) -> np.ndarray:
    """The digests of chunks of one length ``(chunks, n, D)`` float32, at once: a multilinear hash of each
    chunk's 32-bit words, ``Σ word_j × key_j mod 2^64`` with fixed odd keys. It tells a resent chunk from a
    different one (two chunks that differ collide with probability at most about 2^-32, not adversarially: a
    client can only confuse its own streams), and costs a fraction of a byte-wise hash per chunk of a
    gateway's tick."""
    words = chunks.reshape(len(chunks), -1).view("<u4")
    return np.einsum("ij,j->i", words, keys_for(words.shape[1]))  # a quarter cheaper than matmul's uint64 loop


def keys_for(words: int) -> np.ndarray:
    """The keys of a chunk of ``words`` 32-bit words (from a cached run of the next power of two)."""
    return digest_keys(1 << (words - 1).bit_length())[:words]


@functools.cache
def digest_keys(size: int) -> np.ndarray:
    """``size`` odd 64-bit keys from SHAKE-128 of a fixed label: the same on every server (digests are stored
    in state files and the shared store), and each prefix of a longer run of keys is the shorter run."""
    keys = np.frombuffer(hashlib.shake_128(b"progress-stream chunk digest").digest(8 * size), "<u8")
    return keys | np.uint64(1)


class StreamTable:
    """Streams by id; hidden state, step, frame rate, the last ``window`` outputs (progress, band and each
    frame's place in its action) and the chunks accepted over them live in arrays indexed by slot (a chunk is
    recorded at the position of its first frame). ``band``: whether the cell answers one."""

    def __init__(self, capacity: int, hidden_dim: int, window: int, band: bool = True):
        self.capacity = capacity
        self.window = window
        self.band = band
        self.state = np.zeros((capacity, hidden_dim), np.float32)
        self.step = np.zeros(capacity, np.int64)
        self.fps = np.full(capacity, np.nan)  # NaN: the stream gave none
        self.outputs = np.zeros((capacity, window), np.float32)
        self.bands = np.zeros((capacity, window, 2), np.float32)
        self.seen = np.zeros((capacity, window), np.int64)  # 1-based frames into the action (0: not retained)
        # seq + 1 of the chunk that starts at this position (0: none), its frames × 2 + reset, its digest
        self.chunk_seq = np.zeros((capacity, window), np.int64)
        self.chunk_shape = np.zeros((capacity, window), np.int32)
        self.chunk_digest = np.zeros((capacity, window), np.uint64)
        self.streams: dict[str, Stream] = {}
        self.owned: Counter[str] = Counter()  # streams held per owner (a key's name), for its quota
        self.queued_frames = 0  # accepted frames not yet processed, over every stream
        self._free = list(range(capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self.streams)

    def create(
        self, stream_id: str, durable: bool = True, owner: str = DEFAULT_OWNER, fps: float | None = None
    ) -> Stream:
        if not self._free:
            raise TooManyStreams(f"the server holds its maximum of {self.capacity} streams; retry later")
        slot = self._free.pop()
        self.state[slot] = 0.0
        self.step[slot] = 0
        self.fps[slot] = np.nan if fps is None else fps
        self.chunk_seq[slot] = 0
        stream = Stream(stream_id, slot, owner, durable=durable)
        self.streams[stream_id] = stream
        self.owned[owner] += 1
        return stream

    def fps_of(self, stream: Stream) -> float | None:
        fps = float(self.fps[stream.slot])
        return None if np.isnan(fps) else fps

    def set_fps(self, stream: Stream, fps: float) -> None:
        """A stream opened again with a frame rate: its answers from now on use it."""
        self.fps[stream.slot] = fps

    def get(self, stream_id: str) -> Stream:
        try:
            return self.streams[stream_id]
        except KeyError:
            raise missing(stream_id) from None

    def remove(self, stream: Stream) -> None:
        """Forget ``stream``; its waiting chunks fail, its slot is freed once no batch holds it."""
        if self.streams.pop(stream.id, None) is stream:
            self.owned[stream.owner] -= 1
        self.queued_frames -= stream.queued  # frames in a running batch are counted off when it completes
        for chunk in stream.pending:
            if not chunk.future.done():
                chunk.future.set_exception(StreamNotFound(f"stream {stream.id!r} was deleted"))
        stream.pending.clear()
        stream.closed = True
        if not stream.busy:
            self._free.append(stream.slot)

    def accept(self, stream: Stream, chunk: Chunk) -> bool:
        """Take ``chunk`` (its seq is ``next_seq``); True if the stream just became ready for a batch."""
        n = len(chunk.frames)
        self.remember(stream.slot, chunk.seq, n, chunk.reset, chunk_digest(chunk.frames))
        stream.pending.append(chunk)
        stream.next_seq += n
        self.queued_frames += n
        return not stream.in_cycle and stream.block is None and len(stream.pending) == 1

    def accept_block(self, block: Block) -> None:
        """Take ``block`` (each row's stream idle, with no chunk waiting, its seq the stream's ``next_seq``):
        its streams stay busy until the block is answered; chunks accepted for them meanwhile wait behind it."""
        k, now = block.steps, time.monotonic()
        self.remember(block.slots, block.seqs, k, block.resets, chunk_digests(block.frames))
        for stream in block.streams:
            stream.next_seq += k
            stream.block = block
            stream.last_seen = now
        self.queued_frames += len(block) * k

    def gather(
        self,
        ready: deque[Stream | Block],
        max_rows: int,
        emb: np.ndarray,
        out: np.ndarray,
        band: np.ndarray | None,
    ) -> Batch | None:
        """Up to ``max_rows`` rows from the ready queue: each ready stream with the next ``≤ len(emb)`` frames
        of its oldest chunk, each block whole (one that no longer fits waits for the next batch), copied into
        the buffers ``emb (steps, rows, D)``; ``out (steps, rows)`` and ``band (steps, rows, 2)`` (None for a
        cell without one) take the outputs."""
        streams, chunks, counts, blocks, rows = [], [], [], [], 0
        while ready and rows < max_rows:
            item = ready[0]
            if isinstance(item, Block):
                if rows + len(item) > max_rows:
                    break
                blocks.append(item)
                rows += len(item)
            elif not (item.closed or not item.pending or item.block is not None):
                chunk = item.pending[0]
                item.in_cycle = min(len(chunk.frames) - chunk.pos, len(emb))
                streams.append(item)
                chunks.append(chunk)
                counts.append(item.in_cycle)
                rows += 1
            ready.popleft()
        if not rows:
            return None
        singles = len(streams)
        k = max(counts + [block.steps for block in blocks])
        inputs = emb[:k, :rows]
        slots = np.fromiter((s.slot for s in streams), np.int64, singles)
        seqs = np.fromiter((c.seq + c.pos for c in chunks), np.int64, singles)
        if singles and max(counts) == 1:  # one frame per row (1-frame messages): one copy for all rows
            np.concatenate([c.frames[c.pos : c.pos + 1] for c in chunks], out=inputs[0, :singles])
        else:
            for i, (chunk, n) in enumerate(zip(chunks, counts, strict=True)):
                inputs[:n, i] = chunk.frames[chunk.pos : chunk.pos + n]
        resets = [i for i, c in enumerate(chunks) if c.reset and c.pos == 0]
        placed, at = [], singles
        for block in blocks:
            inputs[: block.steps, at : at + len(block)] = block.frames.transpose(1, 0, 2)
            streams.extend(block.streams)
            counts.extend([block.steps] * len(block))
            resets.extend(at + np.flatnonzero(block.resets))
            placed.append((at, block))
            at += len(block)
        if blocks:
            slots = np.concatenate([slots, *(block.slots for block in blocks)])
            seqs = np.concatenate([seqs, *(block.seqs for block in blocks)])
        steps0 = self.step[slots]
        steps0[resets] = 0
        bands = None if band is None else band[:k, :rows]
        counts_ = np.array(counts)
        return Batch(
            streams, chunks, placed, slots, counts_, seqs, steps0, self.state[slots], inputs, out[:k, :rows], bands
        )

    def complete(self, batch: Batch) -> list[Stream]:
        """Store a run batch's state and outputs, answer every chunk and block it finished; the streams that
        still have frames waiting (to go back to the ready queue). Streams removed meanwhile free their slots
        once their rows are stored (a slot is reset when it is taken again) and are not answered: their
        chunks were refused when they were removed, their rows of a block answer :class:`StreamNotFound`."""
        self.queued_frames -= int(batch.counts.sum())
        self.state[batch.slots] = batch.state
        self.step[batch.slots] = batch.steps0 + batch.counts
        seen = batch.steps0[:, None] + np.arange(1, batch.out.shape[0] + 1)  # (rows, K): 1-based, in the action
        self.record(batch, seen)
        answers, timed = self.answers(batch, seen)
        closed = None
        if any(map(CLOSED, batch.streams)):  # rare: only then build the mask
            closed = np.fromiter((s.closed for s in batch.streams), bool, len(batch))
            for stream in (s for s, gone in zip(batch.streams, closed, strict=True) if gone):
                stream.in_cycle = 0
                stream.block = None
                self._free.append(stream.slot)
        again = self.answer_chunks(batch, answers, timed, closed)
        for at, block in batch.blocks:
            rows = slice(at, at + len(block))
            gone = None if closed is None else closed[rows]
            again += self.answer_block(block, answers[rows, : block.steps], timed[rows], gone)
        return again

    def answer_chunks(
        self, batch: Batch, answers: Estimates, timed: np.ndarray, closed: np.ndarray | None
    ) -> list[Stream]:
        """Answer the single streams' chunks this batch finished; those streams with chunks still waiting."""
        untimed = answers.untimed()
        again = []
        singles = len(batch.chunks)
        rows = zip(batch.streams, batch.chunks, batch.counts.tolist(), timed[:singles].tolist(), strict=False)
        for i, (stream, chunk, n, has_fps) in enumerate(rows):
            if closed is not None and closed[i]:
                continue
            stream.done_seq += n
            stream.in_cycle = 0
            piece = (answers if has_fps else untimed)[i, :n]  # views into this batch's own arrays
            if chunk.pos or n < len(chunk.frames):  # a chunk that spans cycles: answered whole, at its end
                if chunk.parts is None:
                    chunk.parts = []
                chunk.parts.append(piece)
            chunk.pos += n
            if chunk.pos == len(chunk.frames):
                stream.pending.popleft()
                if not chunk.future.done():
                    chunk.future.set_result(piece if chunk.parts is None else Estimates.join(chunk.parts))
            if stream.pending:
                again.append(stream)
        return again

    @staticmethod
    def answer_block(block: Block, answers: Estimates, timed: np.ndarray, closed: np.ndarray | None) -> list[Stream]:
        """Answer a finished block (its rows' ``answers``); its streams with chunks waiting behind it."""
        k, again = block.steps, []
        for stream in block.streams:
            stream.done_seq += k
            stream.block = None
            if stream.pending:
                again.append(stream)
        if closed is None and (timed.all() or not timed.any()):  # the usual block: one array for every row
            block.settle(answers if timed.any() else answers.untimed())
            return again
        rows: list[Any] = []
        for i, stream in enumerate(block.streams):
            if closed is not None and closed[i]:
                rows.append(StreamNotFound(f"stream {stream.id!r} was deleted"))
            else:
                rows.append(answers[i] if timed[i] else answers[i].untimed())
        block.settle(rows)
        return again

    def answers(self, batch: Batch, seen: np.ndarray) -> tuple[Estimates, np.ndarray]:
        """Every row's answers ``(rows, K, …)``, computed for the whole batch at once, and which rows'
        streams have a frame rate (the others answer without seconds)."""
        progress = batch.out.T.copy()  # this batch's own (the buffers are reused): answers are views into it
        band = None if batch.band is None else batch.band.transpose(1, 0, 2).copy()
        fps = self.fps[batch.slots]
        timed = ~np.isnan(fps)
        return Estimates.at(progress, band, seen, fps[:, None] if timed.any() else None), timed

    def rewind(self, batch: Batch, exc: Exception) -> None:
        """A failed model call: fail every waiting chunk and block row of the batch's streams (later chunks
        built on the failed one); the streams keep their state and go back to ``next_seq = done_seq``, from
        where clients resend."""
        self.queued_frames -= int(batch.counts.sum())  # the batch's own; those waiting behind below

        def failed(stream: Stream) -> InferenceFailed:
            message = f"inference failed ({exc}); resend from seq {stream.done_seq}"
            return InferenceFailed(message, stream.done_seq)

        for stream in batch.streams:
            if not stream.closed:  # a removed one's waiting chunks were refused and counted off then
                self.queued_frames -= stream.queued
                slot = stream.slot
                self.unprocessed_records(stream, self.chunk_seq[slot], self.chunk_shape[slot], self.chunk_digest[slot])
            stream.in_cycle = 0
            stream.block = None
            if stream.closed:
                self._free.append(stream.slot)
                continue
            for chunk in stream.pending:
                if not chunk.future.done():
                    chunk.future.set_exception(failed(stream))
            stream.pending.clear()
            stream.next_seq = stream.done_seq
        for _, block in batch.blocks:
            block.settle([missing(s.id) if s.closed else failed(s) for s in block.streams])

    def restore(
        self, stream_id: str, done_seq: int, created_at: float, rows: dict[str, np.ndarray], owner: str = DEFAULT_OWNER
    ) -> Stream:
        """A stream from a snapshot: its owner, its counters and its row of every slot array."""
        stream = self.create(stream_id, owner=owner)
        stream.created_at = created_at
        self.overwrite(stream, done_seq, rows)
        return stream

    def overwrite(self, stream: Stream, done_seq: int, rows: dict[str, np.ndarray]) -> None:
        """Replace an idle stream's state with a stored one (newer, from another replica; a store keeps
        each row flat)."""
        stream.next_seq = stream.done_seq = stream.saved_seq = done_seq
        for name in SLOT_ARRAYS:
            array = getattr(self, name)
            array[stream.slot] = np.reshape(rows[name], array.shape[1:])

    def rows_of(self, streams: list[Stream]) -> dict[str, np.ndarray]:
        """Each slot array's rows for ``streams``, as a snapshot must hold them: a chunk partly processed
        is recorded as its processed head, so a client's resend of that head still matches after a restore."""
        rows = {name: getattr(self, name)[np.array([s.slot for s in streams], np.int64)] for name in SLOT_ARRAYS}
        for row, stream in enumerate(streams):
            if stream.pending or stream.block is not None:
                records = rows["chunk_seq"][row], rows["chunk_shape"][row], rows["chunk_digest"][row]
                self.unprocessed_records(stream, *records)
        return rows

    def unprocessed_records(self, stream: Stream, seqs: np.ndarray, shapes: np.ndarray, digests: np.ndarray) -> None:
        """Rewrite ``stream``'s chunk records (its rows of ``chunk_seq``, ``chunk_shape``, ``chunk_digest``) as they
        read once it goes back to ``done_seq`` (a failed model call, a restore): a chunk partly processed as its
        processed head, which a client's resend of that head then matches; a chunk or block row not processed at
        all as never accepted, so that a retry of it cannot match once other frames are processed there."""
        for chunk in stream.pending:
            pos = chunk.seq % self.window
            if chunk.pos:
                shapes[pos] = 2 * chunk.pos + chunk.reset
                digests[pos] = chunk_digest(chunk.frames[: chunk.pos])
            else:
                seqs[pos] = 0
        if stream.block is not None:  # its row starts at done_seq: the stream was idle when the block came
            seqs[stream.done_seq % self.window] = 0

    @staticmethod
    def layout(hidden_dim: int, window: int) -> dict[str, tuple[np.dtype, int]]:
        """Each slot array's dtype and items per stream (how a shared store lays out one stream)."""
        table = StreamTable(1, hidden_dim, window)
        return {
            name: (getattr(table, name).dtype, int(np.prod(getattr(table, name).shape[1:]))) for name in SLOT_ARRAYS
        }

    def record(self, batch: Batch, seen: np.ndarray) -> None:
        """Keep what a retry is answered from, for frame ``seqs[i] + t`` of row ``i`` (``t < counts[i]``): its
        progress, band and place in its action (``seen``, ``(rows, K)``)."""
        counts, slots, seqs = batch.counts, batch.slots, batch.seqs
        full = int(counts.min())
        for t in range(batch.out.shape[0]):
            rows = slice(None) if t < full else np.flatnonzero(counts > t)
            at = (slots[rows], (seqs[rows] + t) % self.window)
            self.outputs[at] = batch.out[t, rows]
            self.seen[at] = seen[rows, t]
            if batch.band is not None:
                self.bands[at] = batch.band[t, rows]

    def remember(
        self, slots: int | np.ndarray, seqs: int | np.ndarray, n: int, resets: bool | np.ndarray, digests: Any
    ) -> None:
        """Record accepted chunks of ``n`` frames (one, or one per row of a block: the other arguments scalars
        or arrays), so that a retry of one can be told from a different chunk."""
        pos = seqs % self.window
        self.chunk_seq[slots, pos] = seqs + 1
        self.chunk_shape[slots, pos] = 2 * n + resets
        self.chunk_digest[slots, pos] = digests

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
        if self.chunk_digest[stream.slot, pos] != digest:
            return "was accepted with different embeddings"
        return None

    def replay(self, stream: Stream, seq: int, n: int) -> Estimates | None:
        """The answers of frames ``seq .. seq+n-1`` again, if all are processed and still retained (at the
        stream's frame rate now)."""
        if seq < stream.done_seq - self.window or seq + n > stream.done_seq:
            return None
        at = (stream.slot, np.arange(seq, seq + n) % self.window)
        seen = self.seen[at]
        if not seen.all():  # stored before answers kept their place in the action, and a reset since
            return None
        band = self.bands[at] if self.band else None
        return Estimates.at(self.outputs[at], band, seen, self.fps_of(stream))
