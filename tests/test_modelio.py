"""Model files: external data kept and contained, fixed batch sizes streamed, atomic outputs."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.errors import DampError
from onnx_damp.modelio import load_model
from tiny_models import IR_VERSION, OPSET, conv_model


def classifier_data(rng, n=60, cin=3):
    y = np.arange(n) % 3
    x = rng.normal(size=(n, cin, 6, 6)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    return x, y


def test_external_data_is_loaded_and_written_beside_the_output(tmp_path):
    rng = np.random.default_rng(0)
    model, _ = conv_model(rng, cin=8, cout=16)  # weights over the 1 KiB external-data threshold
    original = [numpy_helper.to_array(t) for t in model.graph.initializer]
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(model, str(src / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    out = tmp_path / "out.onnx"
    res = onnx_damp.forget(src / "m.onnx", classifier_data(rng, cin=8), [0], output=out)
    assert (tmp_path / "out.onnx.data").is_file()
    edited = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in edited.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"out.onnx.data"}
    full = onnx.load(str(out))
    assert any(not np.array_equal(a, numpy_helper.to_array(b)) for a, b in zip(original, full.graph.initializer))
    assert res.written == [str(tmp_path / "out.onnx.data"), str(out)]


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    model, _ = conv_model(rng)
    inner = tmp_path / "inner"
    inner.mkdir()
    onnx.save_model(model, str(inner / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    (inner / "m.onnx.data").rename(tmp_path / "secret.data")
    proto = onnx.load(str(inner / "m.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.data"
    onnx.save_model(proto, str(inner / "m.onnx"))
    with pytest.raises(DampError, match="outside the model's folder"):
        load_model(inner / "m.onnx")


def test_fixed_batch_of_one_is_streamed(tmp_path):
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "b1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    y = np.arange(30) % 3
    x = (np.eye(4)[y] * 3 + rng.normal(size=(30, 4)) * 0.1).astype(np.float32)
    res = onnx_damp.forget(model, (x, y), [1], max_passes=1)
    assert res.calibration_samples == 30 and res.before.samples == 30
    assert res.passes[0].plans[0].rank >= 1


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    model, _ = conv_model(rng)
    out = tmp_path / "o.onnx"

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(onnx, "save_model", boom)
    with pytest.raises(DampError, match="No space left"):
        onnx_damp.forget(model, classifier_data(rng), [0], output=out, max_passes=1)
    assert list(Path(tmp_path).iterdir()) == []
