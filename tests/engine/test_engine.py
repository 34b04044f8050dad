"""The engine driven directly (no web layer), on real ONNX graphs."""

from __future__ import annotations

import asyncio

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


def test_a_failed_inference_call_fails_its_chunks_and_the_engine_goes_on(tmp_path):
    async def main():
        engine = Engine(odd_cell(tmp_path / "odd.onnx"), EngineConfig(max_wait_us=0, retained_window=256))
        await engine.start()
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
        await engine.stop()

    asyncio.run(main())


def test_a_tick_of_idle_streams_is_one_block_and_any_other_goes_entry_by_entry(runtime):
    async def main():
        engine = Engine(runtime, EngineConfig(max_wait_us=0))
        await engine.start()
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
        await engine.stop()

    asyncio.run(main())
