"""Model files: external data kept and contained, fixed batch sizes streamed, atomic outputs, inputs and
outputs picked by name."""
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.errors import DampError
from onnx_damp.runtime.modelio import load_model
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
    umask = os.umask(0)
    os.umask(umask)
    for f in (out, tmp_path / "out.onnx.data"):  # the mode open() gives, never mkstemp's or onnx's 0600
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask


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


@pytest.mark.parametrize("batch", [1, 4])
def test_fixed_batch_is_streamed(tmp_path, batch):
    """A fixed batch dimension: batches of exactly that size, the last one padded (30 samples, batch 4)."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "b1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])],
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


def two_io_model(required_second_input: bool):
    """x [N, 4] (and a second input `s`) -> features Relu(x * s) first, then logits Gemm(features) [N, 3]."""
    rng = np.random.default_rng(3)
    vi = helper.make_tensor_value_info
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"], name="scale"),
             helper.make_node("Relu", ["xs"], ["features"], name="relu"),
             helper.make_node("Gemm", ["features", "w"], ["logits"], name="head")]
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")]
    if not required_second_input:  # a graph input with a default value (an initializer of the same name)
        inits.append(numpy_helper.from_array(np.ones(1, np.float32), "s"))
    graph = helper.make_graph(nodes, "io", [vi("x", TensorProto.FLOAT, ["N", 4]), vi("s", TensorProto.FLOAT, [1])],
                              [vi("features", TensorProto.FLOAT, ["N", 4]), vi("logits", TensorProto.FLOAT, ["N", 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def io_data(n=30):
    y = np.arange(n) % 3
    return (np.eye(4)[y] * 3 + np.random.default_rng(4).normal(size=(n, 4)) * 0.1).astype(np.float32), y


def test_output_name_picks_the_logits_among_several_outputs():
    model = two_io_model(required_second_input=False)
    res = onnx_damp.forget(model, io_data(), [1], max_passes=1, output_name="logits", input_name="x")
    assert sorted(res.before.per_class) == [0, 1, 2]
    # no --output-name: the first output (4 columns for 3 classes of data: class 3 is allowed to be missing)
    default = onnx_damp.forget(model, io_data(), [1], max_passes=1, allow_missing_classes=True)
    first = onnx_damp.forget(model, io_data(), [1], max_passes=1, output_name="features", allow_missing_classes=True)
    assert default.before.to_dict() == first.before.to_dict() != res.before.to_dict()
    with pytest.raises(DampError, match="no output 'nope'"):
        onnx_damp.forget(model, io_data(), [1], output_name="nope")


def test_several_required_inputs_are_one_line_errors():
    model = two_io_model(required_second_input=True)
    with pytest.raises(DampError, match="pick one with --input-name"):
        onnx_damp.forget(model, io_data(), [1])
    with pytest.raises(DampError, match="does not fit the model"):
        onnx_damp.forget(model, io_data(), [1], input_name="x")  # only one input is ever fed


def test_fits_in_proto_agrees_with_the_exact_size(monkeypatch):
    import onnx_damp.runtime.modelio as mio

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")  # 16 KiB of weights
    const = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.ones((32, 32), np.float32)))
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    g = helper.make_graph([const, node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    size = mio.proto_size(model)
    for limit in (size * 4, size + 1, size, 20_000, 1_000):  # clearly under, at the edge, over
        monkeypatch.setattr(mio, "PROTO_LIMIT", limit)
        assert mio.fits_in_proto(model) == (size < limit), limit


@pytest.mark.parametrize("case", ["negative_int32", "value_floats", "tensor_attribute", "sparse_initializer"])
def test_fits_in_proto_never_says_yes_to_a_model_over_the_limit(monkeypatch, case):
    """Payloads the fast path must count (or size exactly): varints, list attributes, non-Constant tensors."""
    import onnx_damp.runtime.modelio as mio

    n = 4000
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inits, sparse, node = [], [], helper.make_node("Identity", ["x"], ["y"])
    if case == "negative_int32":  # 10 bytes a value as varints, not 4
        inits = [helper.make_tensor("w", TensorProto.INT32, [n], [-1] * n)]
    elif case == "value_floats":
        node = helper.make_node("Constant", [], ["y"], value_floats=[1.0] * n)
    elif case == "tensor_attribute":  # ConstantOfShape's value is a tensor attribute of a non-Constant op
        node = helper.make_node("ConstantOfShape", ["x"], ["y"],
                                value=numpy_helper.from_array(np.ones(n, np.float32)))
    else:
        values = numpy_helper.from_array(np.ones(n, np.float32), "w")
        sparse = [helper.make_sparse_tensor(values, numpy_helper.from_array(np.arange(n, dtype=np.int64)), [n])]
    g = helper.make_graph([node], "g", [x], [y], inits)
    g.sparse_initializer.extend(sparse)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    size = mio.proto_size(model)
    monkeypatch.setattr(mio, "PROTO_LIMIT", size - 1)  # just over the (patched) limit
    assert not mio.fits_in_proto(model)
