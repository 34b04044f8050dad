"""The engine driven directly (no web layer), on real ONNX graphs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from progress_stream.contract.errors import InferenceFailed, SeqConflict
from progress_stream.contract.replies import Estimates
from progress_stream.engine.engine import Engine, EngineConfig
from progress_stream.engine.runtime import CellRuntime
from tests.conftest import frames, offline


def odd_cell(path) -> CellRuntime:
    """A cell with the real signature whose run fails unless batch × 4 divides by 3 (batch 3 works)."""
    f, i64 = TensorProto.FLOAT, TensorProto.INT64
    shape = helper.make_tensor("shape", i64, [2], [3, -1])
    back = helper.make_tensor("back", i64, [2], [-1, 4])
    nodes = [
        helper.make_node("Reshape", ["state", "shape"], ["thirds"]),
        helper.make_node("Reshape", ["thirds", "back"], ["next_state"]),
        helper.make_node("ReduceSum", ["embedding"], ["summed"], axes=[1], keepdims=0),
        helper.make_node("Sigmoid", ["summed"], ["progress"]),
    ]
    graph = helper.make_graph(
        nodes,
        "odd",
        [
            helper.make_tensor_value_info("embedding", f, ["batch", 4]),
            helper.make_tensor_value_info("step", i64, ["batch"]),
            helper.make_tensor_value_info("state", f, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("progress", f, ["batch"]),
            helper.make_tensor_value_info("next_state", f, ["batch", 4]),
        ],
        [shape, back],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)], ir_version=10)
    for k, v in {"format_version": "1", "embedding_dim": "4", "hidden_dim": "4", "position_encoding": "log"}.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return CellRuntime(path, providers="cpu")


def run_engine(cell: CellRuntime, test: Callable[[Engine], Awaitable[None]], **config: object) -> None:
    """``test`` against a started engine on ``cell`` (a batch runs as soon as it is ready unless ``config``
    says otherwise), stopped afterwards."""

    async def main() -> None:
        engine = Engine(cell, EngineConfig(**{"max_wait_us": 0, **config}))
        await engine.start()
        try:
            await test(engine)
        finally:
            await engine.stop()

    asyncio.run(main())


def test_a_failed_inference_call_fails_its_chunks_and_the_engine_goes_on(tmp_path):
    async def check(engine: Engine) -> None:
        x = np.ones((1, 4), np.float32)
        lonely, _ = engine.create("lonely")
        first, second = engine.submit(lonely, 0, x), engine.submit(lonely, 1, x)
        with pytest.raises(InferenceFailed, match="resend from seq 0"):
            await first
        with pytest.raises(InferenceFailed):
            await second
        assert engine.table.get("lonely").next_seq == 0 and engine.table.queued_frames == 0
        streams = [engine.create(sid)[0] for sid in ("a", "b", "c")]
        results = await asyncio.gather(*(engine.submit(stream, 0, x) for stream in streams))
        assert all(len(r) == 1 and r.band is None for r in results)  # a batch of 3 runs fine after the failure

    run_engine(odd_cell(tmp_path / "odd.onnx"), check, retained_window=256)


def test_a_tick_of_idle_streams_is_one_block_and_any_other_goes_entry_by_entry(runtime):
    async def check(engine: Engine) -> None:
        rng = np.random.default_rng(13)
        streams = [engine.create(f"g{i}")[0] for i in range(3)]
        x = np.stack([frames(rng, 2) for _ in range(3)])
        seqs, resets = np.zeros(3, np.int64), np.zeros(3, bool)
        tick = asyncio.ensure_future(engine.tick_block(streams, seqs, x, resets))
        await asyncio.sleep(0)  # accepted as a block, not yet run
        assert all(s.block is not None for s in streams)
        retry = engine.submit(streams[1], 0, x[1])  # the same chunk again, while its block is pending
        answers = await tick
        assert isinstance(answers, Estimates) and answers.progress.shape == (3, 2)
        np.testing.assert_array_equal((await retry).progress, answers.progress[1])
        for i in range(3):
            np.testing.assert_allclose(answers.progress[i], offline(runtime, x[i]), atol=1e-5)
        # one entry conflicts: the others are answered, each in its entry
        y = np.stack([frames(rng, 1) for _ in range(3)])
        mixed = await engine.tick_block(streams, np.array([2, 5, 2]), y, resets)
        assert isinstance(mixed, list) and isinstance(mixed[1], SeqConflict) and mixed[1].expected_seq == 2
        assert [s.next_seq for s in streams] == [3, 2, 3] and isinstance(mixed[0], Estimates)

    run_engine(runtime, check)


def test_an_entry_sent_twice_in_one_tick_is_answered_twice(runtime):
    """A retry inside its own message (a client that repeats an entry) follows that entry, not the whole tick."""

    async def check(engine: Engine) -> None:
        rng = np.random.default_rng(5)
        a, _ = engine.create("twice")
        x, y = frames(rng, 2), frames(rng, 2)
        same = await asyncio.wait_for(
            engine.tick_block([a, a], np.zeros(2, np.int64), np.stack([x, x]), np.zeros(2, bool)), 5
        )
        np.testing.assert_array_equal(same[0].progress, same[1].progress)
        np.testing.assert_allclose(same[0].progress, offline(runtime, x), atol=1e-5)
        other = await asyncio.wait_for(engine.tick([(a, 2, x, False), (a, 2, y, False)]), 5)
        assert isinstance(other[0], Estimates) and isinstance(other[1], SeqConflict)
        assert a.next_seq == 4

    run_engine(runtime, check)


def test_a_retry_after_its_message_was_cancelled_gets_its_chunks_answers(runtime):
    async def check(engine: Engine) -> None:
        rng = np.random.default_rng(6)
        streams = [engine.create(f"c{i}")[0] for i in range(2)]
        x = [frames(rng, 3) for _ in streams]
        async with engine.batcher.cycle_lock:  # no batch runs until the retry is in
            message = asyncio.ensure_future(engine.tick([(s, 0, xi, False) for s, xi in zip(streams, x, strict=True)]))
            await asyncio.sleep(0)  # accepted, not answered
            message.cancel()
            await asyncio.sleep(0.01)
            assert message.cancelled() and streams[1].pending
            retry = engine.submit(streams[1], 0, x[1])
        retried = await asyncio.wait_for(retry, 5)
        np.testing.assert_allclose(retried.progress, offline(runtime, x[1]), atol=1e-5)

    run_engine(runtime, check)


def odd_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 4)).astype(np.float32)


def test_a_chunk_refused_by_a_failed_call_is_not_answered_from_frames_processed_in_its_place(tmp_path):
    """After a failed call the client resends from done_seq, here other frames in another chunking: a late retry
    of a refused chunk is a conflict, never the answers of the frames processed where it would have been."""

    async def check(engine: Engine) -> None:
        rng = np.random.default_rng(7)
        a, _ = engine.create("a")
        refused = odd_frames(rng, 3)
        first, second = engine.submit(a, 0, odd_frames(rng, 1)), engine.submit(a, 1, refused)  # a batch of 1 fails
        for future in (first, second):
            with pytest.raises(InferenceFailed):
                await future
        others = [engine.create(sid)[0] for sid in ("b", "c")]
        resent = [engine.submit(s, 0, odd_frames(rng, 4)) for s in (a, *others)]  # batches of 3 run
        await asyncio.gather(*resent)
        with pytest.raises(SeqConflict):
            await engine.submit(a, 1, refused)

    run_engine(odd_cell(tmp_path / "odd.onnx"), check, retained_window=256)
