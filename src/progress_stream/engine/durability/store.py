"""Stream state shared through Redis, so that any replica can take a stream over.

One hash per stream, ``progress:stream:<id>``: ``seq`` (frames processed), ``model`` (the checkpoint's
sha256), ``window``, ``created``, ``owner`` (the name of the key that created the stream, never the key;
a hash without it is the tenant ``default``'s) and ``blob``, the stream's row of every slot array of the
table (hidden state, step, retained outputs, chunk records) in a fixed layout. A write goes through a
Lua script that refuses to move ``seq`` backwards or to change the owner, so a stale copy on another
replica can never overwrite newer state, nor a replica creating the same id for another key take the
stream; many writes go in one pipelined round trip. A delete names the owner it deletes for (the admin
key's: any). Keys expire after the idle TTL. A state written for another model or window is never
restored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import redis.asyncio as redis
from redis.exceptions import RedisError

from progress_stream.engine.streams import DEFAULT_OWNER

log = logging.getLogger(__name__)

PREFIX = "progress:stream:"
#: Write only forward, and only for the stream's owner: refuse a snapshot older than the stored one
#: (equal seq: the same state), or one for another owner.
WRITE_FORWARD = """
local stored = redis.call('HMGET', KEYS[1], 'seq', 'owner')
if stored[1] then
  if (stored[2] or ARGV[8]) ~= ARGV[7] then return 0 end
  if tonumber(stored[1]) > tonumber(ARGV[1]) then return 0 end
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'model', ARGV[2], 'window', ARGV[3], 'created', ARGV[4], 'blob', ARGV[5],
  'owner', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return 1
"""
#: Delete the stream's hash if it is ARGV[1]'s (empty: anyone's); 1 if it was deleted.
DELETE_OWNED = """
if ARGV[1] ~= '' and (redis.call('HGET', KEYS[1], 'owner') or ARGV[2]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


class StoreUnavailable(RuntimeError):
    """The shared store cannot be reached (or answered an error); one line naming it."""


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
        self, url: str, password: str | None, model: str, layout: dict[str, tuple[np.dtype, int]], ttl_s: float
    ):
        """``layout``: each slot array's name → (dtype, items per stream), in blob order."""
        self.url = url
        self.client = redis.from_url(url, password=password, socket_timeout=2, socket_connect_timeout=2)
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
        if fields.get(b"model", b"").decode() != self.model or fields.get(b"window", b"").decode() != self.window:
            log.warning("stream %r in the store was written for another model or window; not restored", stream_id)
            return None
        blob, rows, offset = fields[b"blob"], {}, 0
        for name, (dtype, items) in self.layout.items():
            rows[name] = np.frombuffer(blob, dtype, items, offset).reshape(() if items == 1 else (items,))
            offset += np.dtype(dtype).itemsize * items
        owner = fields.get(b"owner", DEFAULT_OWNER.encode()).decode()
        return StreamState(stream_id, int(fields[b"seq"]), float(fields[b"created"]), rows, owner)

    async def save(self, states: list[StreamState]) -> int:
        """Write ``states`` in one pipelined round trip; how many moved the stored state forward."""
        if not states:
            return 0
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for s in states:
                    args = [s.done_seq, self.model, self.window, repr(s.created_at), self.encode(s), self.ttl_ms]
                    args += [s.owner, DEFAULT_OWNER]
                    await self._write(keys=[PREFIX + s.stream_id], args=args, client=pipe)
                return sum(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: write failed ({exc})") from None

    async def load(self, stream_id: str) -> StreamState | None:
        try:
            fields = await self.client.hgetall(PREFIX + stream_id)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: read failed ({exc})") from None
        return self.decode(stream_id, fields) if fields else None

    async def delete(self, stream_id: str, owner: str | None = None) -> bool:
        """Remove the stream's key if it is ``owner``'s (None: anyone's); whether one was removed."""
        try:
            return bool(await self._delete(keys=[PREFIX + stream_id], args=[owner or "", DEFAULT_OWNER]))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"state store {self.where}: delete failed ({exc})") from None

    async def disconnect(self) -> None:
        """Close the pool's connections; the client opens new ones when next used (on whatever loop runs then)."""
        await self.client.connection_pool.disconnect()

    async def close(self) -> None:
        await self.client.aclose()
