import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from progress_stream.engine.runtime import CellRuntime, ModelError, choose_providers
from progress_stream.server.process import free_port


def test_loads_a_real_cell_and_describes_it(tiny_model):
    rt = CellRuntime(tiny_model, providers="cpu")
    assert (rt.embedding_dim, rt.hidden_dim) == (16, 16)  # state width: the default's one member × hidden 16
    assert rt.providers == ["CPUExecutionProvider"]
    info = rt.describe()
    assert info["position_encoding"] == "log" and "val" in info["metrics"]


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model file"):
        CellRuntime(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf")
    with pytest.raises(ModelError, match=r"bad\.onnx: not a loadable ONNX model"):
        CellRuntime(bad)


def _identity_graph(path, inputs, outputs, meta):
    nodes = [helper.make_node("Identity", [i.name], [o.name]) for i, o in zip(inputs, outputs, strict=False)]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    )
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, path)
    return path


META = {"format_version": "1", "embedding_dim": "4", "hidden_dim": "3", "position_encoding": "log"}


def test_wrong_signature_is_refused(tmp_path):
    f = TensorProto.FLOAT
    path = _identity_graph(
        tmp_path / "wrong.onnx",
        [helper.make_tensor_value_info("x", f, ["batch", 4])],
        [helper.make_tensor_value_info("y", f, ["batch", 4])],
        META,
    )
    with pytest.raises(ModelError, match="inputs are \\['x'\\], expected \\['embedding', 'state', 'step'\\]"):
        CellRuntime(path)


def test_wrong_dtype_of_a_named_input_is_refused(tmp_path):
    f = TensorProto.FLOAT
    ins = [
        helper.make_tensor_value_info(n, f, s)
        for n, s in (("step", ["b"]), ("state", ["b", 3]), ("embedding", ["b", 4]))
    ]
    outs = [helper.make_tensor_value_info(n, f, s) for n, s in (("progress", ["b"]), ("next_state", ["b", 3]))]
    path = _identity_graph(tmp_path / "dtype.onnx", ins, outs, META)  # step is float, not int64
    with pytest.raises(ModelError, match=r"input 'step' is tensor\(float\)"):
        CellRuntime(path)


def test_unknown_format_version_and_missing_metadata(tmp_path):
    f = TensorProto.FLOAT
    ios = ([helper.make_tensor_value_info("a", f, [1])], [helper.make_tensor_value_info("b", f, [1])])
    with pytest.raises(ModelError, match="unknown format version '99'"):
        CellRuntime(_identity_graph(tmp_path / "v.onnx", *ios, {**META, "format_version": "99"}))
    with pytest.raises(ModelError, match="metadata lacks"):
        CellRuntime(_identity_graph(tmp_path / "m.onnx", *ios, {}))
    for coverage in ({}, {"coverage": "high"}, {"coverage": "1.5"}):  # a version 2 cell must state its band's
        with pytest.raises(ModelError, match="needs 'coverage' in \\(0, 1\\)"):
            CellRuntime(_identity_graph(tmp_path / "c.onnx", *ios, {**META, "format_version": "2", **coverage}))


def test_provider_choice():
    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    assert choose_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ModelError, match="not available"):
        choose_providers("NoSuchExecutionProvider")


def test_a_version_1_cell_still_loads_and_answers_without_a_band(tiny_model, tiny_model_v1):
    v2, v1 = CellRuntime(tiny_model, providers="cpu"), CellRuntime(tiny_model_v1, providers="cpu")
    assert v2.coverage == float(v2.metadata["coverage"]) == v2.describe()["coverage"]
    assert v1.coverage is None and v1.describe()["coverage"] is None
    x = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    progress, band = v1.run_action(x)
    assert band is None and v2.run_action(x)[1].shape == (6, 2)
    np.testing.assert_array_equal(progress, v2.run_action(x)[0])


def test_a_server_refuses_a_banded_cell_without_its_coverage_in_one_line(tiny_model, tmp_path):
    model = onnx.load(tiny_model)
    kept = [p for p in model.metadata_props if p.key != "coverage"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    path = tmp_path / "no-coverage.onnx"
    onnx.save(model, path)
    cmd = [sys.executable, "-m", "progress_stream.cli", "serve", "--model", str(path), "--port", str(free_port())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {path}: a cell with a band needs 'coverage' in (0, 1) in its metadata"
    )
