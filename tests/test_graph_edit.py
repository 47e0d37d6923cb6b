"""Graph plumbing on tiny models: the edited model computes x -> W (I - alpha Q Q^T) x exactly,
and the in-graph statistics equal the ones computed by hand."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_damp.method import plan as dm
from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.stats.collector import collect
from tiny_models import IR_VERSION, OPSET, conv_model, gemm_model, matmul_model


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def edit_with(model, node, q, alpha):
    """Apply a hand-made plan (Q, alpha) to one node through the project's own edit path."""
    op = next(o for o in scan_graph(model).editable if o.node_name == node)
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    dm.apply(edited, [dm.LayerPlan(op, q, alpha, 0.0, 0.0)])
    return edited


def projector(d, q, alpha):
    return np.eye(d) - alpha * q @ q.T


@pytest.fixture
def rng():
    return np.random.default_rng(1)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_edit_is_exact(rng, trans_a, trans_b):
    d = 5
    model, w = gemm_model(rng, d=d, trans_a=trans_a, trans_b=trans_b)
    q = np.linalg.qr(rng.normal(size=(d, 2)))[0]
    edited = edit_with(model, "gemm", q, 0.7)
    x = rng.normal(size=(8, d)).astype(np.float32)
    feed = x.T.copy() if trans_a else x
    # Y = X W_eff + b with W_eff [d, out]; the edit acts on the input features: X P W_eff
    w_eff = w.T if trans_b else w
    p = projector(d, q, 0.7)
    expected = run(model, (x @ p).astype(np.float32).T.copy() if trans_a else (x @ p).astype(np.float32))
    got = run(edited, feed)
    assert np.allclose(got, expected, atol=1e-4)
    assert not np.allclose(got, run(model, feed), atol=1e-3)
    assert np.allclose(got - run(model, feed), -(x @ (0.7 * q @ q.T) @ w_eff), atol=1e-4)


def test_matmul_edit_is_exact_on_3d_input(rng):
    d = 6
    model, w = matmul_model(rng, d=d)
    q = np.linalg.qr(rng.normal(size=(d, 1)))[0]
    edited = edit_with(model, "matmul", q, 1.0)
    x = rng.normal(size=(3, 4, d)).astype(np.float32)
    expected = run(model, (x @ projector(d, q, 1.0)).astype(np.float32))
    assert np.allclose(run(edited, x), expected, atol=1e-4)


def test_conv_edit_acts_on_input_channels(rng):
    cin = 4
    model, _ = conv_model(rng, cin=cin)
    q = np.linalg.qr(rng.normal(size=(cin, 2)))[0]
    edited = edit_with(model, "conv", q, 0.5)
    x = rng.normal(size=(2, cin, 6, 6)).astype(np.float32)
    xp = np.einsum("nchw,cd->ndhw", x, projector(cin, q, 0.5)).astype(np.float32)
    assert np.allclose(run(edited, x), run(model, xp), atol=1e-4)


def test_edit_keeps_graph_and_only_changes_initializer_values(rng):
    model, _ = conv_model(rng)
    edited = edit_with(model, "conv", np.linalg.qr(rng.normal(size=(3, 1)))[0], 1.0)
    assert [n.SerializeToString() for n in edited.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert edited.opset_import == model.opset_import and edited.ir_version == IR_VERSION
    assert [t.name for t in edited.graph.initializer] == [t.name for t in model.graph.initializer]
    onnx.checker.check_model(edited)


def test_shared_weight_gets_its_own_copy(rng):
    from onnx import TensorProto, helper, numpy_helper
    w = rng.normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    ops = scan_graph(model).editable
    assert all(o.shared for o in ops)
    q = np.linalg.qr(rng.normal(size=(4, 1)))[0]
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    plan = dm.LayerPlan(ops[0], q, 1.0, 0.0, 0.0)
    dm.apply(edited, [plan])
    assert plan.own_copy and edited.graph.node[0].input[1] == plan.own_copy
    assert edited.graph.node[1].input[1] == "w"
    x = rng.normal(size=(3, 4)).astype(np.float32)
    expected = (x @ projector(4, q, 1.0) @ w) @ w
    assert np.allclose(run(edited, x), expected, atol=1e-4)


@pytest.mark.parametrize("precision, tol", [("float64", 1e-12), ("float32", 1e-6)])
def test_in_graph_statistics_match_numpy(rng, precision, tol):
    cin = 3
    model, p = conv_model(rng, cin=cin)
    x = rng.normal(size=(10, cin, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    ops = scan_graph(model).editable
    stats = collect(model, ops, Dataset(x, y), gram_classes=[0], batch_size=3, precision=precision)
    conv, head = stats.layers["conv"], stats.layers["head"]

    def close(u, v):  # relative to the largest entry: float32 rounding is relative to the magnitudes summed
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * np.abs(v).max())

    rows0 = x[y == 0].transpose(0, 2, 3, 1).reshape(-1, cin).astype(np.float64)
    assert conv.rows[0] == rows0.shape[0]
    close(conv.sums[0], rows0.sum(0))
    close(conv.grams[0], rows0.T @ rows0)
    allrows = x.transpose(0, 2, 3, 1).reshape(-1, cin).astype(np.float64)
    close(conv.total_gram, allrows.T @ allrows)
    # the head sees one pooled row per image
    feats = np.maximum(run_features(model, x), 0).mean(axis=(2, 3))
    assert head.rows[1] == 3
    assert np.allclose(head.sums[1], feats[y == 1].sum(0), rtol=1e-4, atol=1e-5)
    assert stats.samples == {0: 4, 1: 3, 2: 3}
    # every class's Gram kept: the total is their class-order sum (no running total), the same numbers
    every = collect(model, ops, Dataset(x, y), gram_classes=None, batch_size=3, precision=precision).layers["conv"]
    assert set(every.grams) == {0, 1, 2}
    np.testing.assert_array_equal(every.total_gram, (every.grams[0] + every.grams[1]) + every.grams[2])
    close(every.total_gram, allrows.T @ allrows)


def run_features(model, x):
    """Conv output of the tiny CNN, read by exposing it as an extra graph output."""
    from onnx import TensorProto, helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["c"], {"x": x})[0]


def test_scan_reports_why_an_activation_matmul_is_not_edited(rng):
    from onnx import TensorProto, helper
    nodes = [helper.make_node("MatMul", ["a", "b"], ["y"], name="scores")]
    graph = helper.make_graph(nodes, "act", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, [3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])])
    scan = scan_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    assert not scan.editable and "activation" in scan.skipped[0].reason
