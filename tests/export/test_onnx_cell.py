import json

import numpy as np
import onnx
import pytest
import torch

from progress_stream.engine.runtime import CellRuntime
from progress_stream.export.onnx_cell import ExportError, export_checkpoint, file_sha256
from progress_stream.export.verify import TOLERANCE, random_streams, step_mixed_batches, verify_export
from progress_stream.training.checkpoint import load_checkpoint
from tests.conftest import train_tiny


def shapes(values) -> dict:
    return {
        v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
        for v in values
    }


def state_width(checkpoint) -> int:
    """members × layers × hidden: the one state vector the cell carries."""
    _, ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.model_config
    return cfg["members"] * cfg["layers"] * cfg["hidden_dim"]


def test_graph_signature_is_exactly_the_contract(tiny_model, tiny_checkpoint):
    width = state_width(tiny_checkpoint)
    assert width == 16  # the default's one member of hidden 16
    model = onnx.load(tiny_model)
    onnx.checker.check_model(model, full_check=True)
    f, i64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    assert shapes(model.graph.input) == {
        "embedding": (f, ["batch", 16]),
        "step": (i64, ["batch"]),
        "state": (f, ["batch", width]),
    }
    assert shapes(model.graph.output) == {
        "progress": (f, ["batch"]),
        "next_state": (f, ["batch", width]),
        "band": (f, ["batch", 2]),
    }
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_metadata_describes_model_checkpoint_data_and_metrics(tiny_model, tiny_checkpoint):
    meta = {p.key: p.value for p in onnx.load(tiny_model).metadata_props}
    assert meta["format_version"] == "2" and 0 < float(meta["coverage"]) < 1
    width = str(state_width(tiny_checkpoint))
    assert (meta["embedding_dim"], meta["hidden_dim"], meta["position_encoding"]) == ("16", width, "log")
    assert json.loads(meta["position_params"])["length_ref"] > 0
    assert meta["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    assert json.loads(meta["training_data"])["embedding_dim"] == 16
    assert "ogpe" in json.loads(meta["metrics"])["val"]


def test_step_zero_ignores_the_state_input(tiny_model):
    rt = CellRuntime(tiny_model, providers="cpu")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, 16)).astype(np.float32)
    step = np.array([0, 0, 5, 5], np.int64)
    a = rt.step(emb, step, np.zeros((4, rt.hidden_dim), np.float32))
    b = rt.step(emb, step, rng.standard_normal((4, rt.hidden_dim)).astype(np.float32) * 10)
    np.testing.assert_array_equal(a[0][:2], b[0][:2])
    np.testing.assert_array_equal(a[1][:2], b[1][:2])
    assert not np.allclose(a[1][2:], b[1][2:])  # rows past step 0 do read their state


def test_mixed_step_batches_equal_per_stream_runs(tiny_model):
    rt = CellRuntime(tiny_model, providers="cpu")
    rng = np.random.default_rng(1)
    streams = random_streams(12, 16, rng, max_len=30)
    mixed = step_mixed_batches(rt, streams, rng)
    for seq, (progress, band) in zip(streams, mixed, strict=True):
        alone, alone_band = rt.run_action(seq)
        np.testing.assert_allclose(progress, alone, atol=1e-6)
        np.testing.assert_allclose(band, alone_band, atol=1e-6)


def test_parity_with_pytorch_full_sequence(tiny_model, tiny_checkpoint):
    assert verify_export(tiny_model, tiny_checkpoint, streams=24) <= TOLERANCE
    head, _ = load_checkpoint(str(tiny_checkpoint))
    x = np.random.default_rng(2).standard_normal((25, 16)).astype(np.float32)
    ref, ref_band = (t[0].detach().numpy() for t in head(torch.from_numpy(x)[None], dense=True))
    assert ref.std() > 1e-3  # a head with a constant output would make this comparison vacuous
    progress, band = CellRuntime(tiny_model, providers="cpu").run_action(x)
    np.testing.assert_allclose(progress, ref, atol=TOLERANCE)
    np.testing.assert_allclose(band, ref_band, atol=TOLERANCE)


def test_verify_export_catches_a_model_from_another_checkpoint(tiny_model, tiny_data, tmp_path):
    other = train_tiny(tiny_data, tmp_path, seed=7)
    assert verify_export(tiny_model, other, streams=8) > TOLERANCE


def test_relative_checkpoint_is_refused_with_the_reason(tiny_data, tmp_path):
    ckpt = train_tiny(tiny_data, tmp_path / "rel", position_encoding="relative", regime="prefix")
    with pytest.raises(ExportError, match=r"relative.*cannot run as a one-frame cell"):
        export_checkpoint(ckpt, tmp_path / "rel.onnx")
    assert not (tmp_path / "rel.onnx").exists()
