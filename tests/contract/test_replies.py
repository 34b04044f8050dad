"""Each reply encoder of the per-frame path writes exactly its contract model's fields (the models are the
schema the routes declare and the clients read)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from progress_stream.contract.errors import BadInput, InferenceFailed, Overloaded, SeqConflict
from progress_stream.contract.replies import (
    ErrorReply,
    FramesReply,
    ProgressReply,
    SocketErrorReply,
    SocketReply,
    StreamRow,
)

PROGRESS = np.array([0.0, 0.25, 1.0], np.float32)


@pytest.mark.parametrize(
    ("model", "encoded", "expected"),
    [
        (
            FramesReply,
            FramesReply.encode("cam-1", 7, PROGRESS, 10),
            {"stream_id": "cam-1", "seq": 7, "progress": [0.0, 0.25, 1.0], "next_seq": 10},
        ),
        (SocketReply, SocketReply.encode(7, PROGRESS, 10), {"seq": 7, "progress": [0.0, 0.25, 1.0], "next_seq": 10}),
        (ProgressReply, ProgressReply.encode(PROGRESS), {"progress": [0.0, 0.25, 1.0]}),
        (
            StreamRow,
            orjson.dumps(StreamRow.row("cam-1", None, 3, 12, 0.5)),
            {"stream_id": "cam-1", "progress": None, "step": 3, "processed_seq": 12, "idle_s": 0.5},
        ),
    ],
)
def test_encoders_write_their_model(model, encoded, expected):
    assert orjson.loads(encoded) == expected
    assert model.model_validate_json(encoded).model_dump() == expected  # extra fields are forbidden
    assert set(expected) == set(model.model_fields)


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
