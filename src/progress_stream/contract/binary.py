"""The compact binary frame format of the WebSocket, shared by the server, the client and the load test.

Version 1 (the ``progress.v1`` subprotocol). All little-endian. A request is the header
``uint64 seq, uint32 count, uint32 flags`` then ``count × D`` float32 (row-major); a reply is the header
``uint64 seq, uint64 next_seq, uint32 count, uint32 flags`` then ``count`` float32 progress values.
"""

from __future__ import annotations

import struct

import numpy as np

#: Binary request: little-endian ``uint64 seq, uint32 count, uint32 flags`` then ``count × D`` float32.
REQUEST_HEADER = struct.Struct("<QII")
#: Binary reply: ``uint64 seq, uint64 next_seq, uint32 count, uint32 flags`` then ``count`` float32 progress.
REPLY_HEADER = struct.Struct("<QQII")
FLAG_RESET = 1
KNOWN_FLAGS = FLAG_RESET


def binary_reply(seq: int, next_seq: int, progress: np.ndarray) -> bytes:
    return REPLY_HEADER.pack(seq, next_seq, len(progress), 0) + progress.astype("<f4", copy=False).tobytes()


def binary_request(seq: int, embeddings: np.ndarray, reset: bool = False) -> bytes:
    """Encode a binary frames message (used by the client and the load test)."""
    arr = np.ascontiguousarray(embeddings, dtype="<f4")
    return REQUEST_HEADER.pack(seq, len(arr), FLAG_RESET if reset else 0) + arr.tobytes()


def parse_binary_reply(data: bytes) -> tuple[int, int, np.ndarray]:
    seq, next_seq, count, _ = REPLY_HEADER.unpack_from(data)
    return seq, next_seq, np.frombuffer(data, dtype="<f4", offset=REPLY_HEADER.size, count=count)
