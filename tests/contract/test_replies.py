"""Each reply encoder of the per-frame path writes exactly its contract model's fields (the models are the
schema the routes declare and the clients read)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from progress_stream.contract.binary import (
    FLAG_BAND,
    FLAG_REMAINING,
    FLAG_SECONDS,
    REPLY_HEADER,
    binary_reply,
    parse_binary_reply,
)
from progress_stream.contract.cell import remaining_frames
from progress_stream.contract.errors import BadInput, InferenceFailed, Overloaded, SeqConflict
from progress_stream.contract.gateway import EntryResult, decode_tick_reply, entry_trailer
from progress_stream.contract.replies import (
    PER_FRAME,
    ErrorReply,
    Estimates,
    FramesReply,
    ProgressReply,
    SocketErrorReply,
    SocketReply,
    StreamRow,
    per_frame,
    stream_answers,
)

PROGRESS = np.array([0.5, 0.25, 1.0], np.float32)
BAND = np.array([[0.25, 0.5], [0.125, 0.5], [0.5, 1.0]], np.float32)
SEEN = np.array([1, 2, 3])
#: A stream at 4 frames a second, a cell with a band: every field present.
FULL = Estimates.at(PROGRESS, BAND, SEEN, 4.0)
#: Its frames left: seen·(1 − q)/q, q the progress a quarter of the way to the band's low end.
LEANED = SEEN.astype(np.float32) * (1 - (q := PROGRESS + np.float32(0.25) * (BAND[:, 0] - PROGRESS))) / q
FIELDS = {
    "progress": [0.5, 0.25, 1.0],
    "band": [[0.25, 0.5], [0.125, 0.5], [0.5, 1.0]],
    "remaining_frames": [float(str(v)) for v in LEANED],  # as JSON writes a float32: its shortest decimal
    "remaining_band": [[1.0, 3.0], [2.0, 14.0], [0.0, 3.0]],
    "remaining_s": [float(str(v)) for v in LEANED / np.float32(4.0)],
}
#: A version 1 cell's answers for a stream without a frame rate: the frames left, from the progress alone.
BARE = Estimates.at(PROGRESS, None, SEEN)
BARE_FIELDS = {**FIELDS, "band": None, "remaining_frames": [1.0, 6.0, 0.0], "remaining_band": None, "remaining_s": None}


@pytest.mark.parametrize(
    ("model", "encoded", "expected"),
    [
        (
            FramesReply,
            FramesReply.encode("cam-1", 7, FULL, 10),
            {"stream_id": "cam-1", "seq": 7, **FIELDS, "next_seq": 10},
        ),
        (SocketReply, SocketReply.encode(7, FULL, 10), {"seq": 7, **FIELDS, "next_seq": 10}),
        (SocketReply, SocketReply.encode(7, BARE, 10), {"seq": 7, **BARE_FIELDS, "next_seq": 10}),
        (ProgressReply, ProgressReply.encode(BARE), BARE_FIELDS),
        (
            EntryResult,
            orjson.dumps(stream_answers(["cam-1"], [7], FULL[None], [10])[0], option=orjson.OPT_SERIALIZE_NUMPY),
            {"stream_id": "cam-1", "seq": 7, **FIELDS, "next_seq": 10, "error": None},
        ),
        (
            StreamRow,
            orjson.dumps(StreamRow.row("cam-1", None, 3, 12, 0.5)),
            {"stream_id": "cam-1", "progress": None, "step": 3, "processed_seq": 12, "idle_s": 0.5},
        ),
    ],
)
def test_encoders_write_their_model(model, encoded, expected):
    got = orjson.loads(encoded)
    np.testing.assert_equal(got, {k: v for k, v in expected.items() if k in got})
    assert set(expected) - set(got) <= {"error"}  # an answered tick entry writes no error
    dumped = model.model_validate_json(encoded).model_dump()  # extra fields are forbidden
    np.testing.assert_equal(dumped, expected)
    assert set(expected) == set(model.model_fields)


@pytest.mark.parametrize("timed", [True, False])
def test_a_blocks_answers_are_each_rows_own_with_every_per_frame_field_in_order(timed):
    rows = Estimates.at(
        np.stack([PROGRESS, PROGRESS[::-1]]),
        np.stack([BAND, BAND[::-1]]),
        np.stack([SEEN, SEEN + 5]),
        np.array([[4.0], [2.0]], np.float32) if timed else None,
    )
    got = stream_answers(["cam-1", "cam-2"], [7, 30], rows, [10, 33])
    assert [list(entry) for entry in got] == [["stream_id", "seq", *PER_FRAME, "next_seq"]] * 2
    for entry, stream_id, seq, i in zip(got, ["cam-1", "cam-2"], [7, 30], [0, 1], strict=True):
        np.testing.assert_equal(entry, {"stream_id": stream_id, "seq": seq, **per_frame(rows[i]), "next_seq": seq + 3})
    assert (got[1]["remaining_s"] is None) is not timed


def test_the_time_to_finish_is_the_cell_contracts_and_seconds_divide_it_by_the_rate():
    np.testing.assert_array_equal(FULL.remaining_frames, remaining_frames(PROGRESS, SEEN, BAND))
    assert FULL.remaining_frames[0] > remaining_frames(PROGRESS, SEEN)[0]  # it leans to the band's low end
    np.testing.assert_array_equal(FULL.remaining_band, FIELDS["remaining_band"])
    np.testing.assert_array_equal(FULL.remaining_s, FULL.remaining_frames / np.float32(4.0))
    assert FULL.remaining_s.dtype == np.float32
    # a batch's answers (rows, K) with a rate per row; a row is a view of every array
    block = Estimates.at(np.stack([PROGRESS, PROGRESS]), np.stack([BAND, BAND]), np.stack([SEEN, SEEN]), [[4.0], [2.0]])
    np.testing.assert_array_equal(block[1, :2].remaining_s, FULL.remaining_s[:2] * 2)
    assert block[0, :2].band.shape == (2, 2) and block.untimed().remaining_s is None


def test_answers_read_as_their_progress_and_join_and_slice_field_by_field():
    np.testing.assert_array_equal(np.asarray(FULL), PROGRESS)
    assert len(FULL) == 3 and np.concatenate([FULL, BARE]).shape == (6,)
    joined = Estimates.join([FULL[:1], FULL[1:]])
    for a, b in zip(joined.arrays(), FULL.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert Estimates.join([FULL, BARE]).band is None  # a field one part lacks
    read = Estimates.read(orjson.loads(FramesReply.encode("c", 0, FULL, 3)))
    for a, b in zip(read.arrays(), FULL.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert Estimates.read({"progress": [0.5]}).remaining_frames is None  # an older server's answer


@pytest.mark.parametrize(
    ("answers", "flags"),
    [(FULL, FLAG_BAND | FLAG_REMAINING | FLAG_SECONDS), (BARE, FLAG_REMAINING), (Estimates(PROGRESS), 0)],
)
def test_a_binary_reply_carries_its_sections_after_the_progress_a_first_reader_reads(answers, flags):
    data = binary_reply(7, 10, answers)
    seq, next_seq, count, got_flags = REPLY_HEADER.unpack_from(data)
    assert (seq, next_seq, count, got_flags) == (7, 10, 3, flags)
    # a reader of the first format reads `count` floats after the header and stops there
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", count, REPLY_HEADER.size), PROGRESS)
    sections = {FLAG_BAND: 3 * 2 * 2, FLAG_REMAINING: 3, FLAG_SECONDS: 3}
    assert len(data) == REPLY_HEADER.size + 4 * (3 + sum(n for flag, n in sections.items() if flag & flags))
    _, _, parsed = parse_binary_reply(data)
    for a, b in zip(parsed.arrays(), answers.arrays(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_tick_reply_trailer_follows_every_entry_and_an_older_reply_reads_without_one():
    from progress_stream.contract.gateway import MESSAGE_HEADER, REPLY_ENTRY_HEADER

    entries = [REPLY_ENTRY_HEADER.pack(0, 3, 0, 3, 0) + PROGRESS.tobytes(), REPLY_ENTRY_HEADER.pack(5, 0, 1, 0, 15)]
    old = MESSAGE_HEADER.pack(2, 1) + b"".join(entries)
    new = old + entry_trailer(FULL) + entry_trailer(None)
    for data, expected in ((new, FULL), (old, Estimates(PROGRESS))):
        (first, second) = decode_tick_reply(data)
        assert first[:4] == (0, 0, 3, None) and second[:4] == (1, 5, 0, "seq_conflict")
        for a, b in zip(first[4].arrays(), expected.arrays(), strict=True):
            np.testing.assert_array_equal(a, b)
        assert len(second[4]) == 0


@pytest.mark.parametrize(
    ("error", "body"),
    [
        (Overloaded("wait"), {"code": "overloaded", "message": "wait"}),
        (
            BadInput("embeddings[2]", "bad", code="not_finite"),
            {"code": "not_finite", "message": "bad", "field": "embeddings[2]"},
        ),
        (SeqConflict("resume", 4), {"code": "seq_conflict", "message": "resume", "expected_seq": 4}),
        (InferenceFailed("again", 9), {"code": "inference_failed", "message": "again", "expected_seq": 9}),
    ],
)
def test_error_replies_carry_only_what_applies(error, body):
    assert orjson.loads(ErrorReply.encode(error)) == {"error": body}
    ErrorReply.model_validate_json(ErrorReply.encode(error))
    socket = SocketErrorReply.encode_at(error, 3)
    assert orjson.loads(socket) == {"seq": 3, "error": body}
    SocketErrorReply.model_validate_json(socket)
    assert orjson.loads(SocketErrorReply.encode_at(error, None))["seq"] is None


def test_the_gateway_status_codes_name_every_error_once():
    """The binary status of an entry is its code's place in this list: every code of the error table is
    there, once (a new code is appended, so a client's table of statuses never shifts)."""
    from progress_stream.contract.errors import ERRORS
    from progress_stream.contract.gateway import ERROR_CODES

    assert sorted(ERROR_CODES) == sorted(ERRORS)
    assert ERROR_CODES[:4] == ("invalid_input", "empty", "wrong_dimension", "not_finite")
