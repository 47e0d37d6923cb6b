"""Quantised models: QDQ weights (integer initializer -> DequantizeLinear -> Conv/Gemm/MatMul) are edited in
float64 and requantised with their own scales and zero points; QOperator and com.microsoft operators are
reported with a clear reason, and a model made only of them is a one-line user error."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.method import plan as dm
from onnx_damp.cli import main
from onnx_damp.data.dataset import Dataset
from onnx_damp.errors import DampError
from onnx_damp.ops.graph import scan_graph
from onnx_damp.stats.collector import collect
from onnx_damp.report.tables import layers_table
from tiny_models import make_model

F32, U8, I8 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8
vi = helper.make_tensor_value_info
X_SCALE, X_ZP = np.float32(0.03), np.uint8(128)


@pytest.fixture
def rng():
    return np.random.default_rng(11)


def run(model, x, exact=False):
    """Run model; exact: no graph optimisation, so the ONNX semantics of Q/DQ are computed as written.

    (Optimised, onnxruntime fuses QDQ Conv into its int8 kernels, whose u8 x s8 products may saturate on
    CPUs without VNNI; that would blur the requantisation error these tests measure.)
    """
    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def basis(rng, d, r):
    return np.linalg.qr(rng.normal(size=(d, r)))[0]


def projector(d, q, alpha):
    return np.eye(d) - alpha * q @ q.T


def init_value(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def fake_quant(x, scale=X_SCALE, zp=X_ZP):
    """What the activation Q/DQ pair computes: round half to even, clip to uint8, dequantise."""
    q = np.clip(np.round(x / scale) + float(zp), 0, 255)
    return ((q - float(zp)) * scale).astype(np.float32)


def quantize(w, axis=None, dtype=np.int8, zp=0):
    """Symmetric int8 (or offset uint8) quantisation of w, per tensor or per channel along axis."""
    absmax = np.abs(w).max() if axis is None else np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
    scale = (absmax / 127.0).astype(np.float32)
    shape = [1] * w.ndim if axis is None else [w.shape[axis] if i == axis else 1 for i in range(w.ndim)]
    info = np.iinfo(dtype)
    q = np.clip(np.round(w / scale.reshape(shape)) + zp, info.min, info.max).astype(dtype)
    zps = np.full(np.shape(scale), zp, dtype)
    return q, scale, zps, shape


def dequant(q, scale, zp, shape):
    return (q.astype(np.float64) - zp.astype(np.float64).reshape(shape)) * scale.astype(np.float64).reshape(shape)


def requant(w, scale, zp, shape, dtype=np.int8):
    """Independent reference of the requantisation: round half to even, then clip."""
    t = np.round(w / scale.astype(np.float64).reshape(shape)) + zp.astype(np.float64).reshape(shape)
    info = np.iinfo(dtype)
    return np.clip(t, info.min, info.max).astype(dtype), int(np.count_nonzero((t < info.min) | (t > info.max)))


def act_qdq(name, out):
    """QuantizeLinear + DequantizeLinear on an activation (uint8, per tensor)."""
    return [helper.make_node("QuantizeLinear", [name, "x_scale", "x_zp"], [out + "_q"], name=out + "_quant"),
            helper.make_node("DequantizeLinear", [out + "_q", "x_scale", "x_zp"], [out], name=out + "_dequant")]


ACT_INITS = {"x_scale": X_SCALE, "x_zp": X_ZP}


def edit(model, node, q, alpha):
    """Copy model and apply a hand-made plan through the project's own edit path."""
    op = next(o for o in scan_graph(model).editable if o.node_name == node)
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    plan = dm.LayerPlan(op, q, alpha, 0.0, 0.0)
    dm.apply(edited, [plan])
    onnx.checker.check_model(edited)
    return edited, plan


def same_nodes(a, b):
    return [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]


# ------------------------------------------------------------------------------------------- QDQ Conv
CIN, COUT, Y_SCALE = 3, 4, np.float32(0.1)


def qdq_conv_model(rng):
    """x -> Q/DQ -> Conv(int8 per-channel weight via DequantizeLinear axis 0) -> Q/DQ -> y."""
    w = (rng.normal(size=(COUT, CIN, 3, 3)) * 0.5).astype(np.float32)
    q, scale, zp, shape = quantize(w, axis=0)
    nodes = act_qdq("x", "xd") + [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["c", "y_scale", "y_zp"], ["c_q"], name="c_quant"),
        helper.make_node("DequantizeLinear", ["c_q", "y_scale", "y_zp"], ["y"], name="c_dequant")]
    inits = {**ACT_INITS, "w_q": q, "w_scale": scale, "w_zp": zp, "b": rng.normal(size=COUT).astype(np.float32),
             "y_scale": Y_SCALE, "y_zp": np.uint8(128)}
    model = make_model(nodes, [vi("x", F32, ["N", CIN, 6, 6])], [vi("y", F32, ["N", COUT, 6, 6])], inits)
    return model, (q, scale, zp, shape)


def float_conv_reference(model, w):
    """The same graph with the weight's DequantizeLinear replaced by a float initializer w."""
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    keep = [n for n in ref.graph.node if n.name != "w_dequant"]
    del ref.graph.node[:]
    ref.graph.node.extend(keep)
    ref.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32), "w"))
    return ref


def conv2d(x, w):
    """3x3 convolution with padding 1, float64, no bias."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
    return np.einsum("nchwkl,ockl->nohw", win, w)


def test_qdq_conv_is_editable_and_shows_its_path(rng):
    model, _ = qdq_conv_model(rng)
    scan = scan_graph(model)
    (op,) = scan.editable
    assert op.node_name == "conv" and op.weight_name == "w_q" and op.input_name == "xd" and not op.shared
    assert op.weight_path == "DequantizeLinear(INT8, axis=0) <- w_q" and op.feature_dim == CIN
    assert not scan.skipped


def test_qdq_conv_edit_is_requantised_with_the_same_scales(rng):
    model, (q, scale, zp, shape) = qdq_conv_model(rng)
    qb, alpha = basis(rng, CIN, 2), 0.8
    edited, plan = edit(model, "conv", qb, alpha)
    # topology, names and the scale/zero-point tensors unchanged; the weight is still int8
    assert same_nodes(edited, model)
    assert [t.name for t in edited.graph.initializer] == [t.name for t in model.graph.initializer]
    for name in ("w_scale", "w_zp", "x_scale", "x_zp", "b"):
        assert init_value(edited, name).tobytes() == init_value(model, name).tobytes()
    stored = init_value(edited, "w_q")
    assert stored.dtype == np.int8 and stored.shape == q.shape
    # the float reference edit, requantised independently, is exactly what was stored
    w_edit = np.einsum("oikl,ij->ojkl", dequant(q, scale, zp, shape), projector(CIN, qb, alpha))
    expected, clipped = requant(w_edit, scale, zp, shape)
    assert np.array_equal(stored, expected) and plan.clipped == clipped
    delta = dequant(stored, scale, zp, shape) - w_edit
    w0 = dequant(q, scale, zp, shape)
    assert plan.quant_error == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w_edit - w0), rel=1e-6)
    assert 0 < plan.quant_error < 0.5
    # run in onnxruntime: within quantisation tolerance of the float edit, and clearly moved from the original
    x = rng.normal(size=(5, CIN, 6, 6)).astype(np.float32)
    ref_out = run(float_conv_reference(model, w_edit), x, exact=True)
    got = run(edited, x, exact=True)
    bound = conv2d(np.abs(fake_quant(x)), np.abs(delta)) + Y_SCALE + 1e-5
    assert np.all(np.abs(got - ref_out) <= bound)
    assert np.abs(got - ref_out).mean() < 0.2 * np.abs(run(model, x, exact=True) - ref_out).mean()
    assert run(edited, x).shape == ref_out.shape  # and the optimised (fused int8) session still loads and runs


def test_statistics_read_the_dequantised_activation(rng):
    model, _ = qdq_conv_model(rng)
    x = rng.normal(size=(6, CIN, 6, 6)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    stats = collect(model, scan_graph(model).editable, Dataset(x, y), gram_classes=[0], batch_size=2)
    conv = stats.layers["conv"]
    rows0 = fake_quant(x[y == 0]).transpose(0, 2, 3, 1).reshape(-1, CIN).astype(np.float64)
    assert np.allclose(conv.sums[0], rows0.sum(0), rtol=1e-6) and np.allclose(conv.grams[0], rows0.T @ rows0)


# ------------------------------------------------------------------------------------------ QDQ MatMul
D, OUT = 5, 3


def qdq_matmul_model(q, scale, zp, dtype=U8):
    """x -> Q/DQ -> MatMul with a per-tensor weight stored [OUT, D]: DequantizeLinear -> Transpose -> [D, OUT]."""
    nodes = act_qdq("x", "xd") + [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_t"], name="w_dequant"),
        helper.make_node("Transpose", ["w_t"], ["w"], name="w_transpose", perm=[1, 0]),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm")]
    inits = {**ACT_INITS, "w_q": q, "w_scale": scale, "w_zp": zp}
    return make_model(nodes, [vi("x", F32, ["N", D])], [vi("y", F32, ["N", OUT])], inits)


def test_qdq_matmul_through_a_transpose_uint8(rng):
    w = rng.normal(size=(OUT, D)).astype(np.float32)
    q, scale, zp, shape = quantize(w, dtype=np.uint8, zp=128)
    scale, zp = scale.reshape(()), zp.reshape(())
    model = qdq_matmul_model(q, scale, zp)
    (op,) = scan_graph(model).editable
    assert op.weight_path == "Transpose(perm=[1,0]) <- DequantizeLinear(UINT8, per-tensor) <- w_q"
    assert op.weight_shape == (D, OUT) and op.feature_dim == D
    qb = basis(rng, D, 1)
    edited, plan = edit(model, "mm", qb, 1.0)
    assert same_nodes(edited, model)
    stored = init_value(edited, "w_q")
    assert stored.dtype == np.uint8 and init_value(edited, "w_zp").tobytes() == zp.tobytes()
    w_edit = (projector(D, qb, 1.0) @ dequant(q, scale, zp, shape).T).T   # stored layout [OUT, D]
    expected, clipped = requant(w_edit, scale, zp, shape, np.uint8)
    assert np.array_equal(stored, expected) and plan.clipped == clipped
    x = rng.normal(size=(7, D)).astype(np.float32)
    delta = dequant(stored, scale, zp, shape) - w_edit
    xd = fake_quant(x).astype(np.float64)
    bound = np.abs(xd) @ np.abs(delta).T + 1e-5
    assert np.all(np.abs(run(edited, x, exact=True) - xd @ w_edit.T) <= bound)


def test_requantisation_clips_and_counts(rng):
    """Weights at the ends of the int8 range, and an edit that pushes some of them further out."""
    q = np.array([[127, -127, 127, -127, 100],
                  [-127, 127, 60, 0, -90],
                  [90, -127, 127, 20, 5]], np.int8)          # [OUT, D]
    scale, zp = np.float32(0.02), np.int8(0)
    model = qdq_matmul_model(q, scale, zp, I8)
    qb = np.array([[1.0], [0.2], [0.0], [0.0], [0.0]]) / np.hypot(1.0, 0.2)
    edited, plan = edit(model, "mm", qb, 1.0)
    w_edit = (projector(D, qb, 1.0) @ dequant(q, scale, zp, (1, 1)).T).T
    expected, clipped = requant(w_edit, scale, zp, (1, 1))
    assert clipped > 0 and plan.clipped == clipped
    stored = init_value(edited, "w_q")
    assert np.array_equal(stored, expected) and stored.min() == -128
    delta = dequant(stored, scale, zp, (1, 1)) - w_edit
    w0 = dequant(q, scale, zp, (1, 1))
    assert plan.quant_error == pytest.approx(np.linalg.norm(delta) / np.linalg.norm(w_edit - w0), rel=1e-6)
    d = plan.to_dict()
    assert d["clipped"] == clipped and d["quant_error"] == plan.quant_error


def test_shared_qdq_weight_gets_a_float_copy(rng):
    w = rng.normal(size=(4, 4)).astype(np.float32)
    q, scale, zp, shape = quantize(w)
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="second")]
    model = make_model(nodes, [vi("x", F32, ["N", 4])], [vi("y", F32, ["N", 4])],
                       {"w_q": q, "w_scale": scale.reshape(()), "w_zp": zp.reshape(())})
    assert all(o.shared for o in scan_graph(model).editable)
    qb = basis(rng, 4, 1)
    edited, plan = edit(model, "first", qb, 1.0)
    assert plan.own_copy and "float" in plan.note and plan.quant_error is None
    assert np.array_equal(init_value(edited, "w_q"), q)
    wd = dequant(q, scale, zp, shape).astype(np.float32)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.allclose(run(edited, x, exact=True), x @ projector(4, qb, 1.0) @ wd @ wd, atol=1e-4)


def test_dequantize_of_a_computed_tensor_is_skipped(rng):
    """float W -> QuantizeLinear -> DequantizeLinear -> MatMul: nothing stored as integers to requantise."""
    nodes = [helper.make_node("QuantizeLinear", ["w_f", "w_scale"], ["w_q"], name="w_quant"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"], name="w_dequant"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [vi("x", F32, ["N", D])], [vi("y", F32, ["N", OUT])],
                       {"w_f": rng.normal(size=(D, OUT)).astype(np.float32), "w_scale": np.float32(0.05)})
    scan = scan_graph(model)
    assert not scan.editable and "DequantizeLinear node w_dequant" in scan.skipped[0].reason


# ------------------------------------------------------------------------------------ QDQ end to end
def qdq_cnn(rng, classes=3):
    """x -> Q/DQ -> Conv (int8 per-channel) -> Relu -> GAP -> Flatten -> Gemm(transB, int8 per-row weight)."""
    w, fc = (rng.normal(size=(4, CIN, 3, 3)) * 0.5).astype(np.float32), rng.normal(size=(classes, 4)).astype(np.float32)
    wq, ws, wz, _ = quantize(w, axis=0)
    fq, fs, fz, _ = quantize(fc, axis=0)
    nodes = act_qdq("x", "xd") + [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="w_dequant", axis=0),
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("DequantizeLinear", ["fc_q", "fc_scale", "fc_zp"], ["fc"], name="fc_dequant", axis=0),
        helper.make_node("Gemm", ["f", "fc"], ["y"], name="head", transB=1)]
    inits = {**ACT_INITS, "w_q": wq, "w_scale": ws, "w_zp": wz, "fc_q": fq, "fc_scale": fs, "fc_zp": fz}
    return make_model(nodes, [vi("x", F32, ["N", CIN, 6, 6])], [vi("y", F32, ["N", classes])], inits)


def test_forget_on_a_qdq_model_reports_quantisation(rng):
    model = qdq_cnn(rng)
    y = np.arange(90) % 3
    shift = y[:, None, None, None] * np.array([1.0, -1.0, 0.5])[:, None, None]
    x = (rng.normal(size=(90, CIN, 6, 6)) * 0.5 + shift).astype(np.float32)
    res = onnx_damp.forget(model, (x, y), [1], max_passes=1)
    assert same_nodes(res.model, model)
    assert init_value(res.model, "w_q").dtype == np.int8 and init_value(res.model, "fc_q").dtype == np.int8
    edited = [p for p in res.passes[0].plans if p.alpha > 0 and p.rank > 0]
    assert edited and all(p.quant_error is not None and p.quant_error >= 0 and p.clipped >= 0 for p in edited)
    layers = res.to_dict()["passes"][0]["layers"]
    assert {"quant_error", "clipped"} <= set(layers[0])
    text = layers_table(res)
    assert "quant. err." in text and "clipped" in text


def test_layers_table_has_no_quantisation_columns_for_float_models(rng):
    from tiny_models import conv_model
    model, _ = conv_model(rng)
    y = np.arange(60) % 3
    x = (rng.normal(size=(60, 3, 6, 6)) + y[:, None, None, None]).astype(np.float32)
    res = onnx_damp.forget(model, (x, y), [0], max_passes=1)
    assert "quant. err." not in layers_table(res)
    assert res.to_dict()["passes"][0]["layers"][0]["quant_error"] is None


# ----------------------------------------------------------------------- QOperator and com.microsoft
def qoperator_model(rng):
    """One of each QOperator weight op, and com.microsoft ops with and without a weight; never run."""
    i8 = lambda *s: rng.integers(-5, 5, size=s).astype(np.int8)  # noqa: E731
    f32 = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    s, z = "x_scale", "x_zp"
    nodes = [
        helper.make_node("QuantizeLinear", ["x", s, z], ["xq"], name="quant"),
        helper.make_node("QLinearConv", ["xq", s, z, "cw", "ws", "wz", s, z], ["c1"], name="qconv"),
        helper.make_node("ConvInteger", ["xq", "cw2", z, "wz"], ["c2"], name="iconv"),
        helper.make_node("DequantizeLinear", ["c1", s, z], ["c1f"], name="deq"),
        helper.make_node("Flatten", ["c1f"], ["flat"], name="flatten"),
        helper.make_node("QuantizeLinear", ["flat", s, z], ["fq"], name="quant2"),
        helper.make_node("QLinearMatMul", ["fq", s, z, "mw", "ws", "wz", s, z], ["m1"], name="qmatmul"),
        helper.make_node("MatMulInteger", ["fq", "mw", z, "wz"], ["m2"], name="imatmul"),
        helper.make_node("QGemm", ["fq", s, z, "gw", "ws", "wz"], ["g"], name="qgemm", domain="com.microsoft",
                         transB=1),
        helper.make_node("FusedConv", ["c1f", "fw"], ["fc"], name="fused_conv", domain="com.microsoft",
                         activation="Relu"),
        helper.make_node("FusedMatMul", ["flat", "fmw"], ["fm"], name="fused_matmul", domain="com.microsoft"),
        helper.make_node("Gelu", ["flat"], ["gelu"], name="gelu", domain="com.microsoft")]
    inits = {s: np.float32(0.1), z: np.uint8(128), "ws": np.float32(0.05), "wz": np.int8(0),
             "cw": i8(2, 2, 1, 1), "cw2": i8(2, 2, 1, 1), "mw": i8(8, 3), "gw": i8(3, 8), "fw": f32(2, 2, 1, 1),
             "fmw": f32(8, 3)}
    i32, img = TensorProto.INT32, [1, 2, 2, 2]
    outs = [vi("c2", i32, img), vi("m1", U8, [1, 3]), vi("m2", i32, [1, 3]), vi("g", F32, [1, 3]),
            vi("fc", F32, img), vi("fm", F32, [1, 3]), vi("gelu", F32, [1, 8])]
    return make_model(nodes, [vi("x", F32, [1, 2, 2, 2])], outs, inits, domains={"com.microsoft": 1})


def test_qoperator_and_com_microsoft_ops_are_reported():
    scan = scan_graph(qoperator_model(np.random.default_rng(0)))
    assert not scan.editable
    skipped = {s.node_name: s for s in scan.skipped}
    assert set(skipped) == {"qconv", "iconv", "qmatmul", "imatmul", "qgemm", "fused_conv", "fused_matmul"}
    assert all(s.quantized_op and "not supported" in s.reason and "QDQ" in s.reason for s in scan.skipped)
    assert "QOperator" in skipped["qconv"].reason and "com.microsoft QGemm" in skipped["qgemm"].reason


def qlinear_matmul_classifier(rng):
    """x -> QuantizeLinear -> QLinearMatMul (int8 weight) -> DequantizeLinear -> logits; runs in onnxruntime."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="quant"),
             helper.make_node("QLinearMatMul", ["xq", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"],
                              ["yq"], name="qmatmul"),
             helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"], name="deq")]
    inits = {**ACT_INITS, "w": np.eye(3, dtype=np.int8) * 100, "w_scale": np.float32(0.01), "w_zp": np.int8(0),
             "y_scale": np.float32(0.05), "y_zp": np.uint8(128)}
    return make_model(nodes, [vi("x", F32, ["N", 3])], [vi("y", F32, ["N", 3])], inits)


def test_model_of_only_qoperators_is_a_user_error(rng, tmp_path):
    model = qlinear_matmul_classifier(rng)
    y = np.arange(30) % 3
    x = (np.eye(3)[y] + rng.normal(size=(30, 3)) * 0.1).astype(np.float32)
    with pytest.raises(DampError, match="QOperator/com.microsoft.*QLinearMatMul.*QDQ"):
        onnx_damp.forget(model, (x, y), [1])
    path, data = tmp_path / "q.onnx", tmp_path / "d.npz"
    onnx.save(model, str(path))
    np.savez(data, x=x, y=y)
    r = CliRunner().invoke(main, ["forget", str(path), "--data", str(data), "--forget", "1", "-o",
                                  str(tmp_path / "o.onnx"), "-q"])
    errors = [line for line in r.output.strip().splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(errors) == 1 and "QLinearMatMul" in errors[0] and "Traceback" not in r.output
    assert not (tmp_path / "o.onnx").exists()


def test_onnxruntime_quantize_static_qdq_export(rng, tmp_path):
    """A QDQ model written by onnxruntime's own static quantiser (per-channel int8 weights, uint8 activations)."""
    quant = pytest.importorskip("onnxruntime.quantization")
    from tiny_models import conv_model
    model, _ = conv_model(rng, cin=3, cout=8)
    y = np.arange(90) % 3
    x = (rng.normal(size=(90, 3, 6, 6)) * 0.5 + y[:, None, None, None] * np.array([1.0, -1.0, 0.5])[:, None, None]
         ).astype(np.float32)
    src, dst = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    onnx.save(model, str(src))

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x[i:i + 30]} for i in range(0, 90, 30)])

        def get_next(self):
            return next(self.batches, None)

    quant.quantize_static(str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                          weight_type=quant.QuantType.QInt8, activation_type=quant.QuantType.QUInt8)
    qdq = onnx.load(str(dst))
    ops = onnx_damp.inspect(qdq).editable
    assert [o.node_name for o in ops] == ["conv", "head"]
    assert all("DequantizeLinear(INT8, axis=" in o.weight_path for o in ops)
    res = onnx_damp.forget(qdq, (x, y), [1], max_passes=1)
    assert same_nodes(res.model, qdq)
    for o in ops:
        assert init_value(res.model, o.weight_name).dtype == np.int8
    assert any(p.quant_error is not None for p in res.passes[0].plans)
