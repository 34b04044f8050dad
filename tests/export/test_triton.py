"""The Triton repository: parse config.pbtxt with Triton's own schema and walk the state mapping."""

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from progress_stream.export.triton import MODEL_NAME, write_repository

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.INT64: mc.TYPE_INT64}


def value_info(values) -> dict:
    return {
        v.name: (
            ONNX_TO_TRITON[v.type.tensor_type.elem_type],
            [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    }


def test_config_parses_and_every_state_maps_onto_the_graph(tiny_model, tmp_path):
    folder = write_repository(tiny_model, tmp_path)
    assert folder.name == MODEL_NAME
    config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
    graph = onnx.load(folder / "1" / "model.onnx").graph
    inputs, outputs = value_info(graph.input), value_info(graph.output)

    assert config.backend == "onnxruntime" and config.max_batch_size > 0
    states = {s.input_name: s for s in config.sequence_batching.state}
    assert set(states) == {"state", "step"}
    for name, state in states.items():
        assert state.output_name in outputs
        dtype, shape = inputs[name]
        assert state.data_type == dtype == outputs[state.output_name][0]
        assert shape[0] == "batch" and list(state.dims) == shape[1:] == outputs[state.output_name][1][1:]
        (initial,) = state.initial_state
        assert initial.zero_data and initial.data_type == dtype and list(initial.dims) == list(state.dims)
    # Triton fills the state inputs; the client sends the rest, and every graph input is covered.
    assert {i.name for i in config.input} | set(states) == set(inputs)
    assert {o.name for o in config.output} | {s.output_name for s in states.values()} == set(outputs)


def test_triton_graph_steps_like_triton_would_carry_it(tiny_model, tmp_path):
    """Feed next_state/next_step back as Triton does from zero initial state; equals the plain cell."""
    folder = write_repository(tiny_model, tmp_path)
    triton = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(tiny_model), providers=["CPUExecutionProvider"])
    width = {i.name: i for i in plain.get_inputs()}["state"].shape[1]  # members × layers × hidden
    x = np.random.default_rng(0).standard_normal((7, 2, 16)).astype(np.float32)
    state, step = np.zeros((2, width), np.float32), np.zeros((2, 1), np.int64)
    plain_state = np.zeros((2, width), np.float32)
    for t in range(7):
        progress, state, band, step = triton.run(None, {"embedding": x[t], "step": step, "state": state})
        ref, plain_state, ref_band = plain.run(
            None, {"embedding": x[t], "step": np.full(2, t, np.int64), "state": plain_state}
        )
        np.testing.assert_allclose(progress, ref, atol=1e-6)
        np.testing.assert_allclose(band, ref_band, atol=1e-6)
    assert step.tolist() == [[7], [7]]
