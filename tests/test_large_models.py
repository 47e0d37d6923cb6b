"""Large models: sessions without serialising the whole proto, block-wise edits of large weights, and (opt-in,
ONNX_DAMP_LARGE_TESTS=1) a real model above protobuf's 2 GiB limit edited end to end with external data."""
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.method import plan as dm
from onnx_damp.runtime import session as runtime
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime import modelio
from tiny_models import IR_VERSION, OPSET, gemm_model, matmul_model


def test_session_from_external_initializer_stubs_matches_and_leaves_the_proto_alone(monkeypatch):
    rng = np.random.default_rng(0)
    model, w = gemm_model(rng, d=40, out=30, trans_b=1)
    before = model.SerializeToString()
    light, names, values = runtime.split_large_initializers(model, threshold=1000)  # w: 4800 B, b: 120 B
    assert names == ["w"] and light.graph.initializer[0].data_location == TensorProto.EXTERNAL
    assert not light.graph.initializer[0].raw_data
    np.testing.assert_array_equal(values[0], w)
    monkeypatch.setattr(modelio, "PROTO_LIMIT", 0)  # take the large-model path on a small model
    monkeypatch.setattr(runtime, "LARGE_TENSOR", 1000)
    sess = runtime.make_session(model)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    plain = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])
    assert model.SerializeToString() == before


@pytest.mark.parametrize("limit", ["SERIALISE_LIMIT", "ARRAY_SESSION_BYTES"])
def test_models_with_large_weights_are_never_serialised_whole(monkeypatch, limit):
    """Under protobuf's limit too: weights above SERIALISE_LIMIT reach onnxruntime as arrays, not as bytes;
    above ARRAY_SESSION_BYTES too, while the model still counts as serialisable (its session may be pooled)."""
    rng = np.random.default_rng(0)
    model, _ = gemm_model(rng, d=40, out=30, trans_b=1)
    assert runtime.serialise_whole(model)
    monkeypatch.setattr(runtime, limit, 1000)
    monkeypatch.setattr(runtime, "LARGE_TENSOR", 1000)
    assert runtime.serialise_whole(model) == (limit == "ARRAY_SESSION_BYTES")
    calls = []
    real = runtime.split_large_initializers

    def spy(m):
        light, names, values = real(m)
        calls.append(names)
        return light, names, values
    monkeypatch.setattr(runtime, "split_large_initializers", spy)
    sess = runtime.make_session(model)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])
    assert calls == [["w"]]   # the weight went to onnxruntime as an array (the 120-byte bias stayed inline)


@pytest.mark.parametrize("builder", ["gemm_t", "gemm", "matmul"])
def test_block_wise_edit_equals_whole_matrix_edit(builder):
    rng = np.random.default_rng(1)
    if builder == "matmul":
        model, w = matmul_model(rng, d=12, out=50)
    else:
        model, w = gemm_model(rng, d=12, out=50, trans_b=int(builder == "gemm_t"))
    op = scan_graph(model).editable[0]
    q, _ = np.linalg.qr(rng.normal(size=(12, 2)))
    whole = dm.edit_weight(op, w.astype(np.float64), q, 0.8).astype(np.float32)
    blocks, change, norm = dm.edit_weight_chunked(op, w, q, 0.8, rows=7)
    np.testing.assert_array_equal(blocks, whole)
    ref = dm.edit_weight(op, w.astype(np.float64), q, 0.8)
    assert change == pytest.approx(np.linalg.norm(ref - w), rel=1e-9)
    assert norm == pytest.approx(np.linalg.norm(w.astype(np.float64)), rel=1e-9)


def _big_model(folder, rng, d=256, blocks=4100, width=512, classes=10, per_class=20):
    """x [N, d] -> MatMul W1 [d, blocks * width] (2.15 GB float32) -> Reshape [N, blocks, width] -> ReduceMean
    over blocks -> Gemm head fitted by least squares: a working linear classifier whose file exceeds 2 GiB.

    W1 is written row by row straight into the external-data file (protobuf cannot hold it in one message).
    """
    data = folder / "big.onnx.data"
    w_eff = np.empty((d, width), dtype=np.float32)
    with open(data, "wb") as fh:
        for i in range(d):
            row = rng.standard_normal(blocks * width, dtype=np.float32) / np.float32(np.sqrt(d))
            w_eff[i] = row.reshape(blocks, width).mean(axis=0)
            fh.write(row.tobytes())
    w1 = onnx.TensorProto()
    w1.name, w1.data_type = "w1", TensorProto.FLOAT
    w1.dims.extend([d, blocks * width])
    w1.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.onnx.data"), ("offset", "0"), ("length", str(d * blocks * width * 4))):
        entry = w1.external_data.add()
        entry.key, entry.value = key, value
    x = np.zeros((per_class * classes, d), dtype=np.float32)
    y = np.repeat(np.arange(classes), per_class)
    x[np.arange(len(y)), y] = 3.0
    x += 0.3 * rng.standard_normal(x.shape, dtype=np.float32)
    feats = np.c_[x @ w_eff, np.ones(len(x), dtype=np.float32)]
    sol = np.linalg.lstsq(feats, np.eye(classes)[y], rcond=None)[0]
    head_w, head_b = sol[:-1].T.astype(np.float32), sol[-1].astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="big"),
             helper.make_node("Reshape", ["h", "shape"], ["h3"], name="reshape"),
             helper.make_node("ReduceMean", ["h3"], ["m"], name="pool", axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "head_w", "head_b"], ["y"], name="head", transB=1)]
    inits = [w1, numpy_helper.from_array(np.array([-1, blocks, width]), "shape"),
             numpy_helper.from_array(head_w, "head_w"), numpy_helper.from_array(head_b, "head_b")]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    path = folder / "big.onnx"
    onnx.save_model(model, str(path))
    return path, x, y


@pytest.mark.skipif(os.environ.get("ONNX_DAMP_LARGE_TESTS") != "1",
                    reason="writes and edits a 2.15 GB model (about 19 GB of memory, 10 minutes): set ONNX_DAMP_LARGE_TESTS=1")
def test_model_above_2_gib_is_edited_with_external_data(tmp_path):
    rng = np.random.default_rng(2)
    src = tmp_path / "src"
    src.mkdir()
    path, x, y = _big_model(src, rng)
    assert (src / "big.onnx.data").stat().st_size > 2 ** 31
    out = tmp_path / "out" / "edited.onnx"
    out.parent.mkdir()
    res = onnx_damp.forget(str(path), (x, y), forget=[3], output=str(out), quiet=True, max_passes=1,
                           feature_samples=20)
    assert res.after.forget_accuracy < res.before.forget_accuracy
    assert (out.parent / "edited.onnx.data").stat().st_size > 2 ** 31
    edited = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in edited.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"edited.onnx.data"}
    onnx.checker.check_model(str(out))
    assert res.relative_change["big"] > 0
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    pred = sess.run(None, {"x": x})[0].argmax(1)
    assert np.mean(pred[y == 3] == 3) == pytest.approx(res.after.forget_accuracy)


def test_string_initializers_stay_inline():
    """onnxruntime cannot take string arrays through add_external_initializers: they stay in the graph."""
    rng = np.random.default_rng(0)
    model, _ = gemm_model(rng, d=40, out=30, trans_b=1)
    model.graph.initializer.append(helper.make_tensor("names", TensorProto.STRING, [300], [b"x" * 20] * 300))
    light, names, _ = runtime.split_large_initializers(model, threshold=100)
    assert "names" not in names and "w" in names
    kept = {t.name: t for t in light.graph.initializer}
    assert kept["names"].data_location == TensorProto.DEFAULT and len(kept["names"].string_data) == 300
