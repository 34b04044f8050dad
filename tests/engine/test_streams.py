"""The stream table's transitions, driven synchronously on the real tiny ONNX cell: no event loop runs,
the batcher's gather / execute / finish are called by hand, so every intermediate state is visible."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from progress_stream.contract.errors import InferenceFailed, StreamNotFound
from progress_stream.contract.replies import Estimates
from progress_stream.engine.batcher import Batcher
from progress_stream.engine.engine import Engine, EngineConfig
from progress_stream.engine.metrics import Metrics
from progress_stream.engine.runtime import CellRuntime
from progress_stream.engine.streams import Chunk, StreamTable, chunk_digest, chunk_digests, fill_added
from progress_stream.engine.ticks import Block
from tests.conftest import assert_same, frames, offline, offline_answers


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()  # only a factory of futures here: it never runs
    yield loop
    loop.close()


def make(runtime: CellRuntime, capacity: int = 4, steps: int = 4) -> tuple[StreamTable, Batcher]:
    table = StreamTable(capacity, runtime.hidden_dim, window=64)
    return table, Batcher(runtime, table, Metrics(), max_batch=8, steps_per_cycle=steps)


def accept(
    table: StreamTable, batcher: Batcher, loop, stream, seq: int, x: np.ndarray, reset: bool = False
) -> asyncio.Future:
    future = loop.create_future()
    if table.accept(stream, Chunk(seq, x, reset, future)):
        batcher.ready(stream)
    return future


def cycle(batcher: Batcher):
    batch = batcher.gather()
    batcher.execute(batch)
    batcher.finish(batch)
    return batch


def test_a_chunk_spanning_several_cycles_is_answered_once_whole(runtime, loop):
    table, batcher = make(runtime, steps=4)
    x = frames(np.random.default_rng(1), 10)
    stream = table.create("long")
    future = accept(table, batcher, loop, stream, 0, x)
    assert (stream.next_seq, stream.done_seq, table.queued_frames) == (10, 0, 10)
    done = []
    for expected in (4, 8, 10):
        assert len(cycle(batcher)) == 1
        done.append(stream.done_seq)
        assert table.queued_frames == 10 - expected
        assert future.done() == (expected == 10)
    assert done == [4, 8, 10] and not stream.pending and batcher.gather() is None
    assert_same(future.result(), offline_answers(runtime, x))
    assert_same(table.replay(stream, 2, 6), offline_answers(runtime, x)[2:8])
    assert table.step[stream.slot] == 10


def test_answers_count_frames_from_each_reset_and_seconds_follow_the_streams_rate(runtime, loop):
    table, batcher = make(runtime, steps=4)
    x = frames(np.random.default_rng(7), 9)
    timed, plain = table.create("timed", fps=25.0), table.create("plain")
    first = accept(table, batcher, loop, timed, 0, x[:3])
    second = accept(table, batcher, loop, timed, 3, x[3:], reset=True)  # 6 frames: two cycles
    untimed = accept(table, batcher, loop, plain, 0, x[:3])
    while (batch := batcher.gather()) is not None:
        batcher.execute(batch)
        batcher.finish(batch)
    got = Estimates.join([first.result(), second.result()])
    np.testing.assert_allclose(got.progress, offline(runtime, x, resets=(3,)), atol=1e-5)  # batched with another
    assert_same(got, Estimates.at(got.progress, got.band, np.array([1, 2, 3, 1, 2, 3, 4, 5, 6]), 25.0))
    assert untimed.result().remaining_s is None and untimed.result().band is not None
    assert_same(table.replay(timed, 0, 3), first.result())  # a retry answers the same
    table.set_fps(timed, 50.0)  # opened again at another rate: the answers from then on use it
    np.testing.assert_array_equal(table.replay(timed, 3, 6).remaining_s, got.remaining_s[3:] / 2)


def test_rows_stored_before_the_band_reconstruct_each_frames_place_up_to_the_last_reset():
    # 10 frames processed in a window of 4; the action restarted at frame 8 (step 2 after frame 9)
    rows = {"outputs": np.zeros((1, 4), np.float32), "step": np.array([2])}
    fill_added(rows, np.array([10]))
    # positions 0..3 hold frames 8, 9, 6, 7: 8 and 9 are the 1st and 2nd of their action, 6 and 7 unknown
    assert rows["seen"].tolist() == [[1, 2, 0, 0]]
    assert rows["bands"].shape == (1, 4, 2) and np.isnan(rows["fps"]).all()


def test_rows_drop_out_when_their_chunk_runs_out(runtime, loop):
    table, batcher = make(runtime, steps=4)
    rng = np.random.default_rng(2)
    xs = [frames(rng, n) for n in (1, 3, 4)]
    streams = [table.create(f"s{i}") for i in range(3)]
    futures = [accept(table, batcher, loop, s, 0, x) for s, x in zip(streams, xs, strict=True)]
    batch = batcher.gather()
    assert batch.counts.tolist() == [1, 3, 4] and batch.emb.shape[:2] == (4, 3)
    np.testing.assert_array_equal(batch.emb[:3, 1], xs[1])
    assert batch.seqs.tolist() == [0, 0, 0] and batch.blocks == []
    batcher.execute(batch)
    batcher.finish(batch)
    for future, x in zip(futures, xs, strict=True):
        np.testing.assert_allclose(future.result(), offline(runtime, x), atol=1e-5)


def test_a_delete_mid_cycle_frees_the_slot_when_the_batch_completes(runtime, loop):
    table, batcher = make(runtime, capacity=2, steps=4)
    rng = np.random.default_rng(3)
    x, y = frames(rng, 6), frames(rng, 3)
    gone, kept = table.create("gone"), table.create("kept")
    gone_future = accept(table, batcher, loop, gone, 0, x)
    later = accept(table, batcher, loop, gone, 6, frames(rng, 2))
    kept_future = accept(table, batcher, loop, kept, 0, y)
    batch = batcher.gather()
    table.remove(gone)  # while its rows are in the batch
    assert isinstance(gone_future.exception(), StreamNotFound) and isinstance(later.exception(), StreamNotFound)
    assert table._free == [] and table.queued_frames == 4 + 3  # its 4 frames in the batch still count
    with pytest.raises(Exception, match="maximum of 2 streams"):
        table.create("third")  # the slot is not free while a batch holds it
    batcher.execute(batch)
    batcher.finish(batch)
    assert table.queued_frames == 0 and gone.slot in table._free and gone.done_seq == 0
    np.testing.assert_allclose(kept_future.result(), offline(runtime, y), atol=1e-5)
    assert batcher.gather() is None  # the removed stream is not queued again
    table.create("third")


def test_a_failed_call_rewinds_the_batch_streams_to_what_was_processed(runtime, loop):
    table, batcher = make(runtime, steps=4)
    rng = np.random.default_rng(4)
    stream = table.create("s")
    accept(table, batcher, loop, stream, 0, frames(rng, 4))
    cycle(batcher)  # 4 frames processed
    state_before = table.state[stream.slot].copy()
    first = accept(table, batcher, loop, stream, 4, frames(rng, 6))
    second = accept(table, batcher, loop, stream, 10, frames(rng, 2))
    batch = batcher.gather()
    table.rewind(batch, RuntimeError("device lost"))
    for future in (first, second):
        assert isinstance(future.exception(), InferenceFailed) and future.exception().expected_seq == 4
    assert (stream.next_seq, stream.done_seq, stream.in_cycle, table.queued_frames) == (4, 4, 0, 0)
    np.testing.assert_array_equal(table.state[stream.slot], state_before)
    retry = accept(table, batcher, loop, stream, 4, frames(np.random.default_rng(5), 2))
    cycle(batcher)
    assert retry.done() and stream.done_seq == 6


def test_thread_mode_with_a_delete_mid_flight(runtime):
    """The engine with inference in a worker thread: results equal the offline run, and a stream
    deleted while its batch is in the thread is freed without disturbing the others."""

    async def main() -> None:
        engine = Engine(runtime, EngineConfig(max_streams=8, inference_in_thread=True, max_wait_us=0))
        await engine.start()
        rng = np.random.default_rng(6)
        xs = [frames(rng, 40) for _ in range(4)]
        streams = [engine.create(f"t{i}")[0] for i in range(4)]
        futures = [engine.submit(s, 0, x) for s, x in zip(streams, xs, strict=True)]
        for _ in range(100):  # let the batcher take the first cycle into the thread
            if streams[3].busy:
                break
            await asyncio.sleep(0)
        assert streams[3].busy
        await engine.delete("t3")
        results = await asyncio.gather(*futures[:3])
        with pytest.raises(StreamNotFound):
            await futures[3]
        for result, x in zip(results, xs[:3], strict=True):
            np.testing.assert_allclose(result, offline(runtime, x), atol=1e-5)
        await engine.batcher.drain()
        assert engine.table.queued_frames == 0 and len(engine.table._free) == 8 - 3
        await engine.stop()

    asyncio.run(main())


def assert_close(got: Estimates, expected: Estimates) -> None:
    """Every answer to float32 rounding (rows batched with others step in other kernels than alone)."""
    for a, b in zip(got.arrays(), expected.arrays(), strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def block_of(table: StreamTable, batcher: Batcher, loop, streams, x: np.ndarray, seq: int = 0) -> Block:
    """Frames ``x (rows, k, D)`` of ``streams`` at ``seq``, taken as one block (as the engine takes a gateway tick)."""
    slots = np.array([s.slot for s in streams])
    block = Block(loop, streams, slots, np.full(len(streams), seq), x, np.zeros(len(streams), bool))
    table.accept_block(block)
    batcher.ready(block)
    return block


def test_a_block_shares_a_batch_with_single_chunks_and_each_row_answers_as_offline(runtime, loop):
    table, batcher = make(runtime, capacity=5, steps=4)
    rng = np.random.default_rng(8)
    x = np.stack([frames(rng, 2) for _ in range(3)])  # three streams, two frames each
    y = frames(rng, 3)
    streams = [table.create(f"b{i}", fps=None if i else 10.0) for i in range(3)]
    single = table.create("single")
    alone = accept(table, batcher, loop, single, 0, y)
    block = block_of(table, batcher, loop, streams, x)
    assert [s.next_seq for s in streams] == [2, 2, 2] and all(s.busy for s in streams)
    assert table.queued_frames == 3 + 6
    batch = batcher.gather()
    assert batch.counts.tolist() == [3, 2, 2, 2] and batch.blocks == [(1, block)]
    assert batch.slots.tolist() == [single.slot, *(s.slot for s in streams)]
    np.testing.assert_array_equal(batch.emb[:2, 1:], x.transpose(1, 0, 2))
    batcher.execute(batch)
    batcher.finish(batch)
    rows = block.future.result()  # rows whose frame rates differ: answered row by row
    assert_close(rows[0], offline_answers(runtime, x[0], fps=10.0))
    for row, xi in zip(rows[1:], x[1:], strict=True):
        assert_close(row, offline_answers(runtime, xi))
    assert_close(alone.result(), offline_answers(runtime, y))
    assert all(s.done_seq == 2 and not s.busy for s in streams) and table.queued_frames == 0
    assert_close(table.replay(streams[1], 0, 2), offline_answers(runtime, x[1]))  # a retry answers the same


def test_a_block_of_rows_alike_answers_one_array_and_a_chunk_behind_it_waits(runtime, loop):
    table, batcher = make(runtime, capacity=3, steps=4)
    rng = np.random.default_rng(9)
    x = np.stack([frames(rng, 1) for _ in range(3)])
    streams = [table.create(f"b{i}") for i in range(3)]
    block = block_of(table, batcher, loop, streams, x)
    later = loop.create_future()
    assert not table.accept(streams[0], Chunk(1, frames(rng, 1), False, later))  # not ready: behind the block
    cycle(batcher)
    answers = block.future.result()
    assert isinstance(answers, Estimates) and answers.progress.shape == (3, 1)
    for i in range(3):
        assert_close(answers[i], offline_answers(runtime, x[i]))
    assert not later.done() and streams[0].pending  # queued again once the block was answered
    cycle(batcher)
    assert later.done() and streams[0].done_seq == 2


def test_a_delete_mid_block_answers_its_row_not_found_and_frees_the_slot(runtime, loop):
    table, batcher = make(runtime, capacity=2, steps=4)
    rng = np.random.default_rng(10)
    x = np.stack([frames(rng, 1) for _ in range(2)])
    gone, kept = table.create("gone"), table.create("kept")
    block = block_of(table, batcher, loop, [gone, kept], x)
    batch = batcher.gather()
    table.remove(gone)
    assert table._free == []  # not free while the block holds it
    batcher.execute(batch)
    batcher.finish(batch)
    rows = block.future.result()
    assert isinstance(rows[0], StreamNotFound)
    assert_close(rows[1], offline_answers(runtime, x[1]))
    assert table._free == [gone.slot] and table.queued_frames == 0


def test_a_failed_call_fails_a_blocks_rows_at_the_seq_each_stream_continues_from(runtime, loop):
    table, batcher = make(runtime, capacity=2, steps=4)
    rng = np.random.default_rng(11)
    streams = [table.create(f"b{i}") for i in range(2)]
    accept(table, batcher, loop, streams[1], 0, frames(rng, 3))
    cycle(batcher)
    block = block_of(table, batcher, loop, streams, np.stack([frames(rng, 2) for _ in range(2)]), seq=0)
    behind = loop.create_future()
    table.accept(streams[0], Chunk(2, frames(rng, 1), False, behind))
    table.rewind(batcher.gather(), RuntimeError("device lost"))
    rows = block.future.result()
    assert [r.expected_seq for r in rows] == [0, 3] and isinstance(behind.exception(), InferenceFailed)
    assert [(s.next_seq, s.busy) for s in streams] == [(0, False), (3, False)] and table.queued_frames == 0


def test_chunk_digests_of_a_message_equal_each_chunks_and_tell_one_changed_bit():
    x = frames(np.random.default_rng(12), 12).reshape(4, 3, -1)
    digests = chunk_digests(x)
    assert digests.tolist() == [chunk_digest(c) for c in x] and len(set(digests.tolist())) == 4
    y = x[1].copy()
    y.view(np.uint32)[2, 5] ^= 1 << 17
    assert chunk_digest(y) != digests[1]
