"""The compact binary frame format of the WebSocket, shared by the server, the client and the load test.

Version 1 (the ``progress.v1`` subprotocol). All little-endian. A request is the header
``uint64 seq, uint32 count, uint32 flags`` then ``count × D`` float32 (row-major); a reply is the header
``uint64 seq, uint64 next_seq, uint32 count, uint32 flags`` then ``count`` float32 progress values, then
the :data:`SECTIONS` its flags name. A reader that knows no flag reads the ``count`` progress values and
stops: the sections only ever follow them, so every reader of the first replies still reads these.
"""

from __future__ import annotations

import struct

import numpy as np

from progress_stream.contract.replies import Estimates

#: Binary request: little-endian ``uint64 seq, uint32 count, uint32 flags`` then ``count × D`` float32.
REQUEST_HEADER = struct.Struct("<QII")
#: Binary reply: ``uint64 seq, uint64 next_seq, uint32 count, uint32 flags`` then ``count`` float32 progress.
REPLY_HEADER = struct.Struct("<QQII")
#: Request flag: a new action starts at the first frame.
FLAG_RESET = 1
KNOWN_FLAGS = FLAG_RESET
#: Reply flags: which sections follow the progress values.
FLAG_BAND, FLAG_SECONDS, FLAG_REMAINING = 2, 4, 8
#: What follows a reply's progress values, in this order, each present if its flag is set: the
#: :class:`Estimates` field, its flag and its float32 values per frame.
SECTIONS = (
    ("band", FLAG_BAND, 2),
    ("remaining_frames", FLAG_REMAINING, 1),
    ("remaining_band", FLAG_BAND, 2),
    ("remaining_s", FLAG_SECONDS, 1),
)


def reply_flags(answers: Estimates) -> int:
    """The flags of the sections ``answers`` has."""
    flags = FLAG_BAND if answers.band is not None else 0
    flags |= FLAG_REMAINING if answers.remaining_frames is not None else 0
    return flags | (FLAG_SECONDS if answers.remaining_s is not None else 0)


def section_fields(count: int, flags: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """The sections of ``count`` frames that ``flags`` names, as the fields of a numpy record (a message of
    many entries of one length packs as one array)."""
    return [(name, "<f4", (count, per) if per > 1 else (count,)) for name, flag, per in SECTIONS if flag & flags]


def pack_sections(answers: Estimates, flags: int) -> bytes:
    """The sections ``flags`` names, as they follow the progress values."""
    return b"".join(np.asarray(getattr(answers, name), "<f4").tobytes() for name, flag, _ in SECTIONS if flag & flags)


def read_sections(data: bytes, offset: int, progress: np.ndarray, flags: int) -> tuple[Estimates, int]:
    """The answers of ``progress``'s frames with the sections ``flags`` names, read from ``offset``; where
    they end."""
    count, fields = len(progress), {}
    for name, flag, per in SECTIONS:
        if flag & flags:
            fields[name] = np.frombuffer(data, "<f4", count * per, offset).reshape((count, per) if per > 1 else count)
            offset += 4 * count * per
    return Estimates(progress, **fields), offset


def binary_reply(seq: int, next_seq: int, answers: Estimates) -> bytes:
    flags = reply_flags(answers)
    head = REPLY_HEADER.pack(seq, next_seq, len(answers), flags)
    return head + answers.progress.astype("<f4", copy=False).tobytes() + pack_sections(answers, flags)


def binary_request(seq: int, embeddings: np.ndarray, reset: bool = False) -> bytes:
    """Encode a binary frames message (used by the client and the load test)."""
    arr = np.ascontiguousarray(embeddings, dtype="<f4")
    return REQUEST_HEADER.pack(seq, len(arr), FLAG_RESET if reset else 0) + arr.tobytes()


def parse_binary_reply(data: bytes) -> tuple[int, int, Estimates]:
    """``(seq, next_seq, answers)``; the sections a reply lacks (an older server's) are None."""
    seq, next_seq, count, flags = REPLY_HEADER.unpack_from(data)
    progress = np.frombuffer(data, dtype="<f4", offset=REPLY_HEADER.size, count=count)
    return seq, next_seq, read_sections(data, REPLY_HEADER.size + 4 * count, progress, flags)[0]
