"""Stream state shared through Redis, so that any replica can take a stream over.

One hash per stream, ``<prefix>:stream:<id>`` (the prefix, ``PROGRESS_STATE_PREFIX``, keeps deployments
that share a database apart; a stream id has no ``:``, so no two prefixes share a key): ``seq`` (frames
processed), ``model`` (the checkpoint's sha256), ``window``, ``created``, ``owner`` (the name of the key
that created the stream, never the key; a hash without it is the tenant ``default``'s) and ``blob``, the
stream's row of every slot array of the table (hidden state, step, retained outputs, chunk records, frame
rate) in a fixed layout; a blob written before the last slot arrays were added (:data:`ADDED_ARRAYS`) is
still read. A write goes through a Lua script that refuses to move ``seq`` backwards or to change the
owner, so a stale copy on another replica can never overwrite newer state, nor a replica creating the
same id for another key take the stream; many writes go in one pipelined round trip, and each write's
outcome comes back (a write refused is the caller's to report: its stream is not stored). A delete names
the owner it deletes for (the admin key's: any). Keys expire after the idle TTL. A state written for
another model or window is never restored.

Connections come from a blocking pool: past :data:`POOL_SIZE` calls at once (a burst of takeovers,
say), a call waits up to :data:`POOL_WAIT_S` for a connection instead of failing at once.

A key this server cannot read (the wrong type, a ``seq`` that is not a number, a blob of the wrong
length) is one stream's fault, never the store's: its write is skipped (the script refuses it rather
than fail, so the other writes of the round land) and reading it raises :class:`BadKey`, not
:class:`StoreUnavailable`. Its owner is still read where it can be (a key that is not a hash is the
tenant ``default``'s), so that another tenant is never told such a key exists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from progress_stream.engine.streams import ADDED_ARRAYS, DEFAULT_OWNER, fill_added

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "progress"


def key_prefix(prefix: str) -> str:
    """What every stream key of a deployment with this ``PROGRESS_STATE_PREFIX`` begins with."""
    return f"{prefix}:stream:"


#: Connections to the store at most, and how long a call waits for one when all are busy (then 503).
POOL_SIZE, POOL_WAIT_S = 50, 5.0

#: The stream keys of a deployment with the default prefix.
PREFIX = key_prefix(DEFAULT_PREFIX)
#: What one write did: moved the stored state forward, was refused (the key holds a later seq), was
#: skipped (the key is not a stream's hash with a numeric seq), or was refused because the key is
#: another owner's stream (a replica created the same id for another API key).
WRITTEN, FURTHER_ALONG, BAD_KEY, NOT_OWNER = 1, 0, -1, -2
#: Write only forward, and only for the stream's owner: refuse a snapshot older than the stored one
#: (equal seq: the same state), or one for another owner (a hash without ``owner``: ARGV[8]'s); leave
#: a key that is not ours to read alone.
WRITE_FORWARD = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'none' and kind ~= 'hash' then return -1 end
local stored = redis.call('HMGET', KEYS[1], 'seq', 'owner')
if stored[1] and not string.match(stored[1], '^%d+$') then return -1 end
if (stored[1] or stored[2]) and (stored[2] or ARGV[8]) ~= ARGV[7] then return -2 end
if stored[1] and tonumber(stored[1]) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'model', ARGV[2], 'window', ARGV[3], 'created', ARGV[4], 'blob', ARGV[5],
  'owner', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""
#: Delete the stream's key if it is ARGV[1]'s (empty: anyone's; a hash without ``owner``, or a key that is
#: not a hash, is ARGV[2]'s); 1 if it was deleted.
DELETE_OWNED = """
if ARGV[1] ~= '' then
  local owner = ARGV[2]
  if redis.call('TYPE', KEYS[1]).ok == 'hash' then owner = redis.call('HGET', KEYS[1], 'owner') or ARGV[2] end
  if owner ~= ARGV[1] then return 0 end
end
return redis.call('DEL', KEYS[1])
"""


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (or answered an error); one line naming it."""


class BadKey(ValueError):
    """One stream's key holds what this server cannot read; one line naming the stream and the fault.
    ``owner``: the stream's owner as far as the key tells (a key that is not a hash: the tenant
    ``default``'s), so that only its owner (or the admin) is told the key is unreadable."""

    def __init__(self, message: str, owner: str = DEFAULT_OWNER):
        super().__init__(message)
        self.owner = owner


@dataclass
class StreamState:
    """One stream as stored: its counters and its row of each of the table's slot arrays."""

    stream_id: str
    done_seq: int
    created_at: float
    rows: dict[str, np.ndarray]
    owner: str = DEFAULT_OWNER


class RedisStore:
    def __init__(
        self,
        url: str,
        password: str | None,
        model: str,
        layout: dict[str, tuple[np.dtype, int]],
        ttl_s: float,
        prefix: str = DEFAULT_PREFIX,
    ):
        """``layout``: each slot array's name → (dtype, items per stream), in blob order; ``prefix``: the
        deployment's (see :func:`key_prefix`)."""
        self.url = url
        self.keys = key_prefix(prefix)
        pool = redis.BlockingConnectionPool.from_url(
            url,
            password=password,
            socket_timeout=2,
            socket_connect_timeout=2,
            max_connections=POOL_SIZE,
            timeout=POOL_WAIT_S,
        )
        self.client = redis.Redis.from_pool(pool)
        self.model = model
        self.layout = layout
        self.window = str(layout["outputs"][1])
        self.ttl_ms = int(ttl_s * 1000)
        self._write = self.client.register_script(WRITE_FORWARD)
        self._delete = self.client.register_script(DELETE_OWNED)

    async def check(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: unreachable ({exc})") from None

    @property
    def where(self) -> str:
        """The URL without its password."""
        return self.url.split("@")[-1] if "@" in self.url else self.url

    def encode(self, state: StreamState) -> bytes:
        arrays = (np.ascontiguousarray(state.rows[name], dtype) for name, (dtype, _) in self.layout.items())
        return b"".join(a.tobytes() for a in arrays)

    def decode(self, stream_id: str, fields: dict[bytes, bytes]) -> StreamState | None:
        """The stored state; None if written for another model or window; :class:`BadKey` if unreadable."""
        if fields.get(b"model") != self.model.encode() or fields.get(b"window") != self.window.encode():
            log.warning("stream %r in the store was written for another model or window; not restored", stream_id)
            return None
        # an owner that is not UTF-8 is no tenant's name: only the admin reads (or deletes) that stream
        owner = fields.get(b"owner", DEFAULT_OWNER.encode()).decode(errors="replace")
        seq, created, blob = fields.get(b"seq", b""), fields.get(b"created", b""), fields.get(b"blob", b"")
        if not seq.isdigit():
            raise BadKey(f"stream {stream_id!r} in the store: seq {seq[:20]!r} is not a number", owner)
        try:
            created_at = float(created)
        except ValueError:
            raise BadKey(f"stream {stream_id!r} in the store: created {created[:20]!r} is not a time", owner) from None
        if len(blob) not in (self.blob_size, self.blob_size_before):
            raise BadKey(
                f"stream {stream_id!r} in the store: its blob has {len(blob)} bytes, not {self.blob_size}", owner
            )
        rows, offset = {}, 0
        for name, (dtype, items) in self.layout.items():
            if offset == len(blob):  # written before the added arrays: they come last
                fill_added(rows, int(seq))
                rows["chunk_seq"] = np.zeros_like(rows["chunk_seq"])  # digests of another hash: not checkable
                break
            rows[name] = np.frombuffer(blob, dtype, items, offset).reshape(() if items == 1 else (items,))
            offset += np.dtype(dtype).itemsize * items
        return StreamState(stream_id, int(seq), created_at, rows, owner)

    @property
    def blob_size(self) -> int:
        return sum(np.dtype(dtype).itemsize * items for dtype, items in self.layout.values())

    @property
    def blob_size_before(self) -> int:
        """The size of a blob written before the :data:`ADDED_ARRAYS`."""
        return self.blob_size - sum(
            np.dtype(dtype).itemsize * items for name, (dtype, items) in self.layout.items() if name in ADDED_ARRAYS
        )

    async def save(self, states: list[StreamState]) -> list[int]:
        """Write ``states`` in one pipelined round trip; each one's outcome (:data:`WRITTEN`,
        :data:`FURTHER_ALONG`, :data:`BAD_KEY` or :data:`NOT_OWNER`), in order. A write the store answers
        with an error is that key's fault (:data:`BAD_KEY`, logged), unless every write failed: then the
        store's."""
        if not states:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for s in states:
                    args = [s.done_seq, self.model, self.window, repr(s.created_at), self.encode(s), self.ttl_ms]
                    args += [s.owner, DEFAULT_OWNER]
                    await self._write(keys=[self.keys + s.stream_id], args=args, client=pipe)
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: write failed ({exc})") from None
        errors = [(s, r) for s, r in zip(states, results, strict=True) if isinstance(r, Exception)]
        if errors and len(errors) == len(states):
            raise StoreUnavailable(f"state store {self.where}: write failed ({errors[0][1]})")
        for state, error in errors:
            log.warning("state store %s: the write of stream %r failed: %s", self.where, state.stream_id, error)
        return [BAD_KEY if isinstance(r, Exception) else int(r) for r in results]

    async def load(self, stream_id: str) -> StreamState | None:
        """The stream's stored state, or None; raises :class:`StoreUnavailable` or :class:`BadKey`."""
        try:
            fields = await self.client.hgetall(self.keys + stream_id)
        except ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise BadKey(f"stream {stream_id!r} in the store: its key is not a hash") from None
            raise StoreUnavailable(f"state store {self.where}: read failed ({exc})") from None
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: read failed ({exc})") from None
        return self.decode(stream_id, fields) if fields else None

    async def delete(self, stream_id: str, owner: str | None = None) -> bool:
        """Remove the stream's key if it is ``owner``'s (None: anyone's); whether one was removed."""
        try:
            return bool(await self._delete(keys=[self.keys + stream_id], args=[owner or "", DEFAULT_OWNER]))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: delete failed ({exc})") from None

    async def disconnect(self) -> None:
        """Close the pool's connections; the client opens new ones when next used (on whatever loop runs then)."""
        await self.client.connection_pool.disconnect()

    async def close(self) -> None:
        await self.client.aclose()
