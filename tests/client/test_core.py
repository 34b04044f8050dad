import socket
import threading

import numpy as np
import orjson
import pytest

from progress_stream.client.core import (
    RETRY_DELAY,
    Chunk,
    ReplayLog,
    SeqError,
    SessionState,
    exchange,
    frames_json,
    json_bytes,
    resend_plan,
)
from progress_stream.client.gateway import tick_steps
from progress_stream.client.http import ServerError
from progress_stream.client.ws import SyncWsStreamSession, _WsSession
from progress_stream.contract.replies import Estimates


def chunks(log: ReplayLog, sizes, dim=2, reset_at=()):
    seq, out = 0, []
    for n in sizes:
        c = Chunk(seq, np.arange(seq, seq + n, dtype=np.float32)[:, None].repeat(dim, 1), seq in reset_at)
        log.record(c)
        out.append(c)
        seq += n
    return out


def test_replay_from_expected_seq_cuts_chunks_and_keeps_only_real_resets():
    log = ReplayLog(100)
    cs = chunks(log, [4, 4, 4], reset_at=(4,))
    plan = resend_plan(log, cs[2], expected_seq=2)
    assert [(c.seq, len(c.frames), c.reset) for c in plan] == [(2, 2, False), (4, 4, True), (8, 4, False)]
    assert plan[0].frames[0, 0] == 2


def test_a_restored_server_inside_the_chunk_asks_for_the_head_and_sends_the_tail():
    log = ReplayLog(100)
    (c,) = chunks(log, [6])
    plan = resend_plan(log, c, expected_seq=4)
    assert [(p.seq, len(p.frames)) for p in plan] == [(0, 4), (4, 2)]
    with pytest.raises(SeqError):
        resend_plan(log, c, expected_seq=6)


def test_log_is_bounded_and_says_when_history_is_gone():
    log = ReplayLog(8)
    cs = chunks(log, [4, 4, 4, 4])
    with pytest.raises(SeqError, match="no longer"):
        resend_plan(log, cs[-1], expected_seq=0)
    assert [c.seq for c in resend_plan(log, cs[-1], expected_seq=8)] == [8, 12]


def answers(*progress: float, fps: float | None = 10.0) -> Estimates:
    p = np.array(progress, np.float32)
    return Estimates.at(p, np.stack([p / 2, (p + 1) / 2], axis=1), np.arange(1, len(p) + 1), fps)


def test_exchange_stitches_the_chunk_result_out_of_the_replayed_sends():
    log = ReplayLog(100)
    cs = chunks(log, [3, 3])
    steps = exchange(log, cs[1])
    assert next(steps).seq == 3
    assert steps.send(("conflict", 1)).seq == 1  # the server lost frames 1..2
    assert steps.send(("ok", answers(0.1, 0.2))).seq == 3
    with pytest.raises(StopIteration) as done:
        steps.send(("ok", answers(0.3, 0.4, 0.5)))
    assert done.value.value.progress.tolist() == answers(0.3, 0.4, 0.5).progress.tolist()


def test_a_chunk_answered_in_two_sends_joins_every_field():
    log = ReplayLog(100)
    (c,) = chunks(log, [5])
    steps = exchange(log, c)
    next(steps)
    assert steps.send(("conflict", 2)).seq == 0  # a restored server holds frames 0..1: their answers, then the rest
    assert steps.send(("ok", answers(0.1, 0.2))).seq == 2
    with pytest.raises(StopIteration) as done:
        steps.send(("ok", answers(0.3, 0.4, 0.5)))
    whole = done.value.value
    expected = Estimates.join([answers(0.1, 0.2), answers(0.3, 0.4, 0.5)])
    for got, want in zip(whole.arrays(), expected.arrays(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert whole.band.shape == (5, 2) and whole.remaining_s.shape == (5,)


def test_a_gateway_attaches_each_stream_at_its_rate_again_after_a_reconnect():
    from progress_stream.client.gateway import _Gateway

    gw = _Gateway("ws://127.0.0.1:1")  # no connection: only the messages and the server's replies to them
    assert gw._attach_messages(["a", "b"], fps=25.0) == [('{"attach":["a","b"],"fps":25.0}', 25.0)]
    accepted = [{"stream_id": sid, "handle": i, "next_seq": 0} for i, sid in enumerate("ab")]
    gw._attached(orjson.dumps({"attached": accepted}), 25.0)
    assert gw._attach_messages(["c"]) == [('{"attach":["c"]}', None)]
    # a rate the server refused is not kept: the stream is attached again without it
    refused = '{"attached":[{"stream_id":"c","error":{"code":"invalid_input","field":"fps","message":"bad"}}]}'
    with pytest.raises(ServerError):
        gw._attached(refused, 5000.0)
    # a reconnect attaches every stream again, each at the rate it was attached with
    again = [('{"attach":["a","b"],"fps":25.0}', 25.0), ('{"attach":["c"]}', None)]
    assert gw._attach_messages(["a", "c", "b"]) == again


def test_a_json_chunk_reads_back_as_the_same_float32_in_about_half_the_bytes_of_python_floats():
    rng = np.random.default_rng(0)
    frames = (rng.standard_normal((40, 256)) * np.logspace(-30, 30, 256)).astype(np.float32)
    for given in (frames, frames.T.copy().T, np.asarray(frames, np.float64)):  # Fortran order, float64: same
        body = json_bytes(frames_json(Chunk(7, given, True)))
        message = orjson.loads(body)
        assert message["seq"] == 7 and message["reset"] is True
        back = np.array(message["embeddings"], np.float32)
        assert back.view(np.uint32).tolist() == frames.view(np.uint32).tolist()
    assert len(body) < 0.7 * len(orjson.dumps(frames.tolist()))


def test_a_chunk_is_a_copy_of_two_dimensional_frames():
    state = SessionState("cam", 16)
    buffer = np.ones((2, 4), np.float32)
    chunk = state.new_chunk(buffer, False)
    buffer[:] = 7.0  # a capture loop refills its buffer: what was sent, and is replayed, stays as it was
    assert (chunk.frames == 1.0).all() and (state.log.between(0, 2)[0].frames == 1.0).all()
    with pytest.raises(ValueError, match="x\\[None\\]"):
        state.new_chunk(np.ones(4, np.float32), False)
    assert state.next_seq == 2


def test_a_handshake_the_peer_closes_unanswered_is_a_drop_to_retry_not_an_error():
    """A server that is stopping (or a TCP balancer without a backend) accepts and closes at once."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        closer = threading.Thread(target=lambda: [listener.accept()[0].close() for _ in range(1)], daemon=True)
        closer.start()
        session = SyncWsStreamSession.__new__(SyncWsStreamSession)  # not connected yet: the reconnect path
        _WsSession.__init__(session, f"ws://127.0.0.1:{port}", stream_id="cam")
        assert session._transact(Chunk(0, np.ones((1, 4), np.float32))) == ("wait", RETRY_DELAY)
        closer.join(5)


def test_a_tick_with_a_frame_of_the_wrong_shape_takes_no_seq_for_any_stream():
    streams = {sid: SessionState(sid, 16) for sid in ("a", "b")}
    with pytest.raises(ValueError, match="x\\[None\\]"):
        next(tick_steps(streams, {"a": np.ones((1, 4), np.float32), "b": np.ones(4, np.float32)}, ()))
    assert [s.next_seq for s in streams.values()] == [0, 0]
