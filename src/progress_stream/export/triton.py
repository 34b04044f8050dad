"""A Triton Inference Server model repository for the cell, with implicit sequence state.

Triton carries ``state``/``next_state`` and the frame index ``step``/``next_step`` per sequence
and resets both to zero at a sequence's start (``step == 0`` makes the graph use its learned
initial state). Triton's implicit state needs every state tensor to have a dimension beyond the
batch, so the Triton graph takes ``step`` as ``[batch, 1]`` and adds ``next_step = step + 1``.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

MODEL_NAME = "progress_head"


def triton_graph(cell: onnx.ModelProto) -> onnx.ModelProto:
    """The cell with ``step`` as ``[batch, 1]`` and an extra output ``next_step = step + 1``."""
    model = onnx.ModelProto()
    model.CopyFrom(cell)
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["step_flat" if name == "step" else name for name in node.input]
    prologue = [
        helper.make_node("Constant", [], ["flat_shape"], value=helper.make_tensor("s", TensorProto.INT64, [1], [-1])),
        helper.make_node("Reshape", ["step", "flat_shape"], ["step_flat"]),
        helper.make_node("Constant", [], ["one"], value=helper.make_tensor("o", TensorProto.INT64, [1, 1], [1])),
        helper.make_node("Add", ["step", "one"], ["next_step"]),
    ]
    for i, node in enumerate(prologue):
        graph.node.insert(i, node)
    step_input = next(i for i in graph.input if i.name == "step")
    step_input.CopyFrom(helper.make_tensor_value_info("step", TensorProto.INT64, ["batch", 1]))
    graph.output.append(helper.make_tensor_value_info("next_step", TensorProto.INT64, ["batch", 1]))
    onnx.checker.check_model(model, full_check=True)
    return model


def config_pbtxt(embedding_dim: int, hidden_dim: int, max_batch_size: int = 1024, band: bool = True) -> str:
    """``config.pbtxt``: ONNX Runtime backend, sequence batching with implicit state; ``band``: the cell has
    the band output (format 2)."""
    band_output = ',\n  { name: "band" data_type: TYPE_FP32 dims: [ 2 ] }' if band else ""
    return f"""name: "{MODEL_NAME}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{ name: "embedding" data_type: TYPE_FP32 dims: [ {embedding_dim} ] }}
]
output [
  {{ name: "progress" data_type: TYPE_FP32 dims: [ 1 ] reshape: {{ shape: [ ] }} }}{band_output}
]
sequence_batching {{
  max_sequence_idle_microseconds: 60000000
  oldest {{ max_candidate_sequences: {max_batch_size} max_queue_delay_microseconds: 500 }}
  state [
    {{
      input_name: "state"
      output_name: "next_state"
      data_type: TYPE_FP32
      dims: [ {hidden_dim} ]
      initial_state: {{ name: "zero_state" data_type: TYPE_FP32 dims: [ {hidden_dim} ] zero_data: true }}
    }},
    {{
      input_name: "step"
      output_name: "next_step"
      data_type: TYPE_INT64
      dims: [ 1 ]
      initial_state: {{ name: "zero_step" data_type: TYPE_INT64 dims: [ 1 ] zero_data: true }}
    }}
  ]
}}
instance_group [ {{ kind: KIND_AUTO count: 1 }} ]
"""


def write_repository(cell_path: Path, out: Path, max_batch_size: int = 1024) -> Path:
    """``out/progress_head/config.pbtxt`` and ``out/progress_head/1/model.onnx``; returns the model folder."""
    cell = onnx.load(cell_path)
    meta = {p.key: p.value for p in cell.metadata_props}
    folder = Path(out) / MODEL_NAME
    (folder / "1").mkdir(parents=True, exist_ok=True)
    onnx.save(triton_graph(cell), folder / "1" / "model.onnx")
    band = any(o.name == "band" for o in cell.graph.output)
    (folder / "config.pbtxt").write_text(
        config_pbtxt(int(meta["embedding_dim"]), int(meta["hidden_dim"]), max_batch_size, band)
    )
    return folder
