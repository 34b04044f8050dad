"""Export a checkpoint as a stepwise ONNX cell: one frame in, the hidden state carried in and out.

The graph traces :meth:`training.model.ProgressHead.step`, so the position feature and the
``step == 0`` reset to the learned initial state come from the model code, nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import Tensor, nn

from progress_stream.contract.cell import COVERAGE_KEY, FORMAT_VERSION, INPUTS, OUTPUTS
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.model import ProgressHead

OPSET = 18


class ExportError(ValueError):
    """The checkpoint cannot become a streaming cell."""


class StepCell(nn.Module):
    """``(embedding [B, D], step [B], state [B, H]) → (progress [B], next_state [B, H], band [B, 2])``."""

    def __init__(self, head: ProgressHead):
        super().__init__()
        self.head = head

    def forward(self, embedding: Tensor, step: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.head.step(embedding, step, state)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_checkpoint(checkpoint: Path, out: Path) -> dict[str, str]:
    """Write the ONNX cell for ``checkpoint`` to ``out``; returns the metadata written into it."""
    model, ckpt = load_checkpoint(str(checkpoint))
    if not model.streamable:
        raise ExportError(
            f"{checkpoint}: position encoding 'relative' (arange(T)/T over the prefix) changes the feature of "
            "every past frame when a frame arrives, so it cannot run as a one-frame cell with carried state; "
            "train a streamable encoding (log, linear or none) to export"
        )
    dim, hidden = model.config["input_dim"], model.state_dim
    example = (torch.randn(2, dim), torch.tensor([0, 3]), torch.zeros(2, hidden))
    batch = torch.export.Dim("batch", min=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.WARNING)
        program = torch.onnx.export(
            StepCell(model).eval(),
            example,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            opset_version=OPSET,
            dynamo=True,
            dynamic_shapes={"embedding": {0: batch}, "step": {0: batch}, "state": {0: batch}},
            verbose=False,
        )
    proto = program.model_proto
    metadata = {
        "format_version": FORMAT_VERSION,
        "embedding_dim": str(dim),
        "hidden_dim": str(hidden),
        "position_encoding": model.config["position_encoding"],
        "position_params": json.dumps({"length_ref": model.config["length_ref"]}),
        "output": model.config["output"],
        COVERAGE_KEY: str(ckpt.train_config.coverage),
        "model_config": json.dumps(model.config),
        "checkpoint_sha256": file_sha256(checkpoint),
        "training_data": json.dumps(ckpt.data),
        "metrics": json.dumps(ckpt.metrics),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "progress-stream"
    _name_batch_dims(proto)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, out)
    return metadata


def _name_batch_dims(proto: onnx.ModelProto) -> None:
    """Every input and output's first dimension is the symbolic ``batch``."""
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
