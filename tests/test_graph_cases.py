"""Real-export graph cases: weights behind Identity/Transpose/Reshape/Cast chains or in Constant nodes,
grouped/depthwise/1-D convolutions, operators the tool must report rather than edit (ConvTranspose,
control-flow subgraphs, model-local functions), float16 models, and module scopes from exporter metadata."""
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.method import plan as dm
from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import node_scope, scan_graph
from onnx_damp.stats.collector import collect
from onnx_damp.report.tables import inspect_table
from tiny_models import IR_VERSION, OPSET, conv_model, gemm_model, make_model

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def run(model, x, output=0):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[output]


def run_all(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def projector(d, q, alpha):
    return np.eye(d) - alpha * q @ q.T


def basis(rng, d, r):
    return np.linalg.qr(rng.normal(size=(d, r)))[0]


def edit(model, plans_by_node):
    """Copy model and apply hand-made plans {node: (Q, alpha)} through the project's own edit path."""
    ops = {o.node_name: o for o in scan_graph(model).editable}
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    plans = [dm.LayerPlan(ops[n], q, a, 0.0, 0.0) for n, (q, a) in plans_by_node.items()]
    dm.apply(edited, plans)
    onnx.checker.check_model(edited)
    return edited, plans


def same_nodes(a, b):
    return [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]


def init_value(model, name):
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


# --------------------------------------------------------------------------------- 1. weight chains
D, OUT = 5, 3


def _chain(w_eff, kind):
    """Nodes, initializers and the path description that make a MatMul see w_eff [D, OUT] through kind."""
    if kind == "identity":
        return [helper.make_node("Identity", ["src"], ["w"], name="id")], {"src": w_eff}, "Identity <- src"
    if kind == "transpose":
        return ([helper.make_node("Transpose", ["src"], ["w"], name="tr", perm=[1, 0])], {"src": w_eff.T.copy()},
                "Transpose(perm=[1,0]) <- src")
    if kind == "reshape":
        return ([helper.make_node("Reshape", ["src", "shape"], ["w"], name="rs")],
                {"src": w_eff.reshape(D, OUT, 1), "shape": np.array([0, -1], np.int64)},
                f"Reshape(shape=[{D},{OUT}]) <- src")
    if kind == "cast":
        return ([helper.make_node("Cast", ["src"], ["w"], name="cast", to=F32)], {"src": w_eff.astype(np.float16)},
                "Cast(to=FLOAT) <- src")
    if kind == "constant":
        return ([helper.make_node("Constant", [], ["w"], name="const", value=numpy_helper.from_array(w_eff, "c"))],
                {}, "Constant(w)")
    # combo: a float16 Constant [OUT*D] -> Reshape [OUT, D] -> Transpose -> Cast float -> Identity
    src = numpy_helper.from_array(w_eff.T.reshape(-1).astype(np.float16), "c")
    return ([helper.make_node("Constant", [], ["src"], name="const", value=src),
             helper.make_node("Reshape", ["src", "shape"], ["r"], name="rs"),
             helper.make_node("Transpose", ["r"], ["t"], name="tr", perm=[1, 0]),
             helper.make_node("Cast", ["t"], ["c32"], name="cast", to=F32),
             helper.make_node("Identity", ["c32"], ["w"], name="id")],
            {"shape": np.array([OUT, -1], np.int64)},
            f"Identity <- Cast(to=FLOAT) <- Transpose(perm=[1,0]) <- Reshape(shape=[{OUT},{D}]) <- Constant(src)")


def chain_model(rng, kind):
    w_eff = rng.normal(size=(D, OUT)).astype(np.float32)
    nodes, inits, path = _chain(w_eff, kind)
    nodes = nodes + [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", D])],
                       [helper.make_tensor_value_info("y", F32, ["N", OUT])], inits)
    return model, path


def source_value(model):
    """The weight's source constant: the `src` initializer, or the value of the Constant node."""
    for t in model.graph.initializer:
        if t.name == "src":
            return numpy_helper.to_array(t)
    const = next(n for n in model.graph.node if n.op_type == "Constant")
    return numpy_helper.to_array(const.attribute[0].t)


@pytest.mark.parametrize("kind", ["identity", "transpose", "reshape", "cast", "constant", "combo"])
def test_weight_chain_is_edited_at_its_source(rng, kind):
    model, path = chain_model(rng, kind)
    (op,) = scan_graph(model).editable
    assert op.weight_path == path and not op.shared and op.weight_shape == (D, OUT) and op.feature_dim == D
    q, alpha = basis(rng, D, 2), 0.8
    edited, _ = edit(model, {"mm": (q, alpha)})
    # topology and initializer names unchanged; only the source constant's values moved
    assert same_nodes(edited, model) or kind in ("constant", "combo")
    assert [n.input[:] for n in edited.graph.node] == [n.input[:] for n in model.graph.node]
    assert [t.name for t in edited.graph.initializer] == [t.name for t in model.graph.initializer]
    before, after = source_value(model), source_value(edited)
    assert after.dtype == before.dtype and after.shape == before.shape
    # the MatMul sees W [D, OUT]; the edit W^T P transposed is P W, stored in the source dtype
    w_seen = run_weight(model)
    expected_w = (projector(D, q, alpha) @ w_seen.astype(np.float64)).astype(before.dtype).astype(np.float32)
    assert np.array_equal(run_weight(edited), expected_w)
    x = rng.normal(size=(6, D)).astype(np.float32)
    assert np.allclose(run(edited, x), x @ expected_w, atol=1e-5)
    if kind not in ("cast", "combo"):  # exact in float32: edited(x) == original(x P)
        assert np.allclose(run(edited, x), run(model, (x @ projector(D, q, alpha)).astype(np.float32)), atol=1e-5)


def run_weight(model):
    """The weight the MatMul actually sees, read by exposing `w` as a graph output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info("w", F32, None))
    return run_all(m, np.zeros((1, D), np.float32))[1]


def test_conv_weight_through_reshape_of_a_flat_initializer(rng):
    cin, cout = 3, 4
    w = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Reshape", ["flat", "shape"], ["w"], name="rs"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", cin, 5, 5])],
                       [helper.make_tensor_value_info("y", F32, ["N", cout, 5, 5])],
                       {"flat": w.reshape(-1), "shape": np.array(w.shape, np.int64)})
    q = basis(rng, cin, 1)
    edited, _ = edit(model, {"conv": (q, 1.0)})
    assert same_nodes(edited, model) and init_value(edited, "flat").shape == (w.size,)
    x = rng.normal(size=(2, cin, 5, 5)).astype(np.float32)
    xp = np.einsum("nchw,cd->ndhw", x, projector(cin, q, 1.0)).astype(np.float32)
    assert np.allclose(run(edited, x), run(model, xp), atol=1e-4)


def shared_chain_model(rng):
    """W [4, 4] -> Transpose -> T, and T feeds two MatMuls in a row: x -> first -> second -> y."""
    w = rng.normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["W"], ["T"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "T"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "T"], ["y"], name="second")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 4])],
                       [helper.make_tensor_value_info("y", F32, ["N", 4])], {"W": w})
    return model, w.T


def test_shared_chain_gives_the_node_its_own_copy_of_the_weight_it_sees(rng):
    model, wt = shared_chain_model(rng)
    ops = scan_graph(model).editable
    assert all(o.shared and o.weight_path == "Transpose(perm=[1,0]) <- W" for o in ops)
    q = basis(rng, 4, 1)
    edited, (plan,) = edit(model, {"first": (q, 1.0)})
    assert plan.own_copy and edited.graph.node[1].input[1] == plan.own_copy
    assert edited.graph.node[2].input[1] == "T" and np.array_equal(init_value(edited, "W"), wt.T)
    assert np.allclose(init_value(edited, plan.own_copy), projector(4, q, 1.0) @ wt, atol=1e-6)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.allclose(run(edited, x), x @ projector(4, q, 1.0) @ wt @ wt, atol=1e-4)


def test_shared_chain_edited_for_both_users_in_one_pass(rng):
    """The first user gets its own copy; the second is then the chain's only user and is edited at W."""
    model, wt = shared_chain_model(rng)
    q1, q2 = basis(rng, 4, 1), basis(rng, 4, 2)
    edited, (p1, p2) = edit(model, {"first": (q1, 1.0), "second": (q2, 0.5)})
    assert p1.own_copy and p2.own_copy is None and edited.graph.node[2].input[1] == "T"
    x = rng.normal(size=(3, 4)).astype(np.float32)
    expected = x @ projector(4, q1, 1.0) @ wt @ projector(4, q2, 0.5) @ wt
    assert np.allclose(run(edited, x), expected, atol=1e-4)


def test_an_index_copied_for_each_candidate_edits_as_a_fresh_one(rng):
    """apply(like=) copies one index of the base graph for every copy it edits (the candidates): the same
    bytes as indexing each copy, own copies included, and the base index is not changed by those edits."""
    from onnx_damp.ops.weights import index_graph

    model, _ = shared_chain_model(rng)
    ops = {o.node_name: o for o in scan_graph(model).editable}
    base = index_graph(model.graph)
    before = (dict(base.uses), set(base.constant), dict(base.producer))
    for alpha in (1.0, 0.5):  # two candidates from one base index
        plans = [dm.LayerPlan(ops[n], basis(rng, 4, 1), alpha, 0.0, 0.0) for n in ("first", "second")]
        fresh, copied = onnx.ModelProto(), onnx.ModelProto()
        fresh.CopyFrom(model)
        copied.CopyFrom(model)
        dm.apply(fresh, [dataclasses.replace(p) for p in plans])
        dm.apply(copied, plans, base)
        assert plans[0].own_copy and fresh.SerializeToString() == copied.SerializeToString()
    assert (dict(base.uses), set(base.constant), dict(base.producer)) == before
    assert len(base.inits) == len(model.graph.initializer) == 1
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    edited.graph.initializer.add().CopyFrom(numpy_helper.from_array(np.ones(2, np.float32), "extra"))
    with pytest.raises(ValueError, match="not a copy"):
        base.for_copy(edited.graph)


def test_shared_source_under_an_exclusive_chain_gets_its_own_copy(rng):
    """W feeds a Transpose (to `first`) and also a Gemm directly: editing `first` must not touch W."""
    w = rng.normal(size=(4, 4)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["W"], ["T"], name="tr", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "T"], ["h"], name="first"),
             helper.make_node("Gemm", ["h", "W"], ["y"], name="second")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 4])],
                       [helper.make_tensor_value_info("y", F32, ["N", 4])], {"W": w})
    first = next(o for o in scan_graph(model).editable if o.node_name == "first")
    assert first.shared
    q = basis(rng, 4, 1)
    edited, (plan,) = edit(model, {"first": (q, 1.0)})
    assert plan.own_copy and np.array_equal(init_value(edited, "W"), w)
    x = rng.normal(size=(3, 4)).astype(np.float32)
    assert np.allclose(run(edited, x), x @ projector(4, q, 1.0) @ w.T @ w, atol=1e-4)


def test_unsupported_chain_node_is_skipped_with_a_reason(rng):
    w = rng.normal(size=(D, OUT)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["W", "scale"], ["w"], name="scale_w"),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", D])],
                       [helper.make_tensor_value_info("y", F32, ["N", OUT])],
                       {"W": w, "scale": np.array(2.0, np.float32)})
    scan = scan_graph(model)
    assert not scan.editable
    (skip,) = scan.skipped
    assert skip.node_name == "mm" and "Mul node scale_w" in skip.reason and "Identity" in skip.reason


def test_integer_cast_chain_is_skipped(rng):
    w = rng.integers(-3, 3, size=(D, OUT)).astype(np.int8)
    nodes = [helper.make_node("Cast", ["W"], ["w"], name="cast", to=F32),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", D])],
                       [helper.make_tensor_value_info("y", F32, ["N", OUT])], {"W": w})
    (skip,) = scan_graph(model).skipped
    assert "INT8 is not a float type" in skip.reason


# --------------------------------------------------------------------------- 2. grouped convolutions
def grouped_conv_model(rng, cin, cout, groups, spatial=(5, 5), w=None):
    k = (3,) * len(spatial)
    w = rng.normal(size=(cout, cin // groups) + k).astype(np.float32) if w is None else w
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", group=groups, pads=[1] * (2 * len(spatial)))]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", cin, *spatial])],
                       [helper.make_tensor_value_info("y", F32, ["N", cout, *spatial])], {"w": w})
    return model, w


def apply_channels(x, p):
    """Multiply the channel axis (1) of x by p on the right: x_c <- sum_d x_d P[d, c]."""
    return np.moveaxis(np.moveaxis(x, 1, -1) @ p, -1, 1).astype(np.float32)


def test_grouped_conv_edits_each_group_with_its_diagonal_block(rng):
    cin, cout, groups, alpha = 6, 6, 3, 0.6
    model, w = grouped_conv_model(rng, cin, cout, groups)
    (op,) = scan_graph(model).editable
    assert op.groups == groups and op.feature_dim == cin
    q = basis(rng, cin, 2)
    edited, _ = edit(model, {"conv": (q, alpha)})
    # reference: the same grouped map written as an ungrouped conv with a block-diagonal weight,
    # each block W_g edited by P_gg = I - alpha Q_g Q_g^T (computed here independently)
    p = projector(cin, q, alpha)
    full = np.zeros((cout, cin, 3, 3), np.float64)
    og, ig = cout // groups, cin // groups
    for g in range(groups):
        rows, cols = slice(g * og, (g + 1) * og), slice(g * ig, (g + 1) * ig)
        full[rows, cols] = np.einsum("oikl,ij->ojkl", w[rows].astype(np.float64), p[cols, cols])
    assert np.allclose(init_value(edited, "w"), np.concatenate([full[g * og:(g + 1) * og, g * ig:(g + 1) * ig]
                                                                for g in range(groups)]), atol=1e-6)
    reference, _ = grouped_conv_model(rng, cin, cout, 1, w=full.astype(np.float32))
    x = rng.normal(size=(2, cin, 5, 5)).astype(np.float32)
    assert np.allclose(run(edited, x), run(reference, x), atol=1e-4)


def test_grouped_conv_edit_is_exact_when_q_lies_in_one_group(rng):
    cin, cout, groups = 6, 4, 2
    model, _ = grouped_conv_model(rng, cin, cout, groups)
    q = np.zeros((cin, 2))
    q[3:6] = basis(rng, 3, 2)  # P is block diagonal, so the grouped edit is the exact W P
    edited, _ = edit(model, {"conv": (q, 0.9)})
    x = rng.normal(size=(2, cin, 5, 5)).astype(np.float32)
    assert np.allclose(run(edited, x), run(model, apply_channels(x, projector(cin, q, 0.9))), atol=1e-4)


def test_depthwise_conv_scales_each_channel(rng):
    cin, mult, alpha = 4, 2, 0.7
    model, w = grouped_conv_model(rng, cin, cin * mult, cin)
    q = basis(rng, cin, 2)
    edited, _ = edit(model, {"conv": (q, alpha)})
    scale = 1.0 - alpha * (q ** 2).sum(axis=1)  # the 1x1 block of P for channel c
    assert np.allclose(init_value(edited, "w"), w * np.repeat(scale, mult)[:, None, None, None], atol=1e-6)
    x = rng.normal(size=(2, cin, 5, 5)).astype(np.float32)
    assert np.allclose(run(edited, x), run(model, apply_channels(x, np.diag(scale))), atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_conv1d_edit_and_statistics(rng, groups):
    cin, cout, length = 4, 4, 7
    model, _ = grouped_conv_model(rng, cin, cout, groups, spatial=(length,))
    (op,) = scan_graph(model).editable
    assert op.rank == 3 and op.feature_dim == cin
    x = rng.normal(size=(6, cin, length)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 0, 1])
    stats = collect(model, [op], Dataset(x, y), gram_classes=[0], batch_size=2).layers["conv"]
    rows0 = x[y == 0].transpose(0, 2, 1).reshape(-1, cin).astype(np.float64)
    assert stats.rows[0] == 3 * length
    assert np.allclose(stats.sums[0], rows0.sum(0)) and np.allclose(stats.grams[0], rows0.T @ rows0)
    pooled = collect(model, [op], Dataset(x, y), gram_classes=[0], feature_mode="pooled").layers["conv"]
    assert pooled.rows[1] == 3 and np.allclose(pooled.sums[1], x[y == 1].mean(axis=2).sum(0), atol=1e-5)
    q = np.zeros((cin, 1))
    q[:cin // groups, 0] = basis(rng, cin // groups, 1)[:, 0]  # inside group 0: the edit is exact
    edited, _ = edit(model, {"conv": (q, 1.0)})
    assert np.allclose(run(edited, x), run(model, apply_channels(x, projector(cin, q, 1.0))), atol=1e-4)


# --------------------------------------------------------------------- 3. reported, never edited
def test_conv_transpose_is_reported(rng):
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", 3, 4, 4])],
                       [helper.make_tensor_value_info("y", F32, ["N", 2, 6, 6])], {"w": w})
    scan = scan_graph(model)
    assert not scan.editable
    assert [(s.node_name, s.op_type) for s in scan.skipped] == [("up", "ConvTranspose")]
    assert "not supported" in scan.skipped[0].reason


def control_flow_model(rng):
    """main MatMul h = x W, then If(then: h W), Loop(2 x: v W via Gemm), Scan(rows of h times W)."""
    w = rng.normal(size=(4, 4)).astype(np.float32)
    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("MatMul", ["h", "W"], ["t_out"], name="then_mm")], "then", [],
                               [vi("t_out", F32, ["N", 4])])
    else_g = helper.make_graph([helper.make_node("Identity", ["h"], ["e_out"], name="else_id")], "else", [],
                               [vi("e_out", F32, ["N", 4])])
    loop_g = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep"),
                                helper.make_node("Gemm", ["v_in", "W"], ["v_out"], name="loop_gemm")], "loop",
                               [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
                                vi("v_in", F32, ["N", 4])],
                               [vi("cond_out", TensorProto.BOOL, []), vi("v_out", F32, ["N", 4])])
    scan_g = helper.make_graph([helper.make_node("MatMul", ["row", "W"], ["row_w"], name="scan_mm"),
                                helper.make_node("Add", ["s_in", "row_w"], ["s_out"], name="acc")], "scan",
                               [vi("s_in", F32, [4]), vi("row", F32, [4])],
                               [vi("s_out", F32, [4]), vi("row_w", F32, [4])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="main"),
             helper.make_node("If", ["flag"], ["y_if"], name="branch", then_branch=then_g, else_branch=else_g),
             helper.make_node("Loop", ["trips", "flag", "h"], ["y_loop"], name="repeat", body=loop_g),
             helper.make_node("Scan", ["zero", "h"], ["y_sum", "y_rows"], name="rows", body=scan_g,
                              num_scan_inputs=1)]
    outs = [vi("y_if", F32, ["N", 4]), vi("y_loop", F32, ["N", 4]), vi("y_sum", F32, [4]), vi("y_rows", F32, ["N", 4])]
    model = make_model(nodes, [vi("x", F32, ["N", 4])], outs,
                       {"W": w, "flag": np.array(True), "trips": np.array(2, np.int64),
                        "zero": np.zeros(4, np.float32)})
    return model, w


def test_operators_in_control_flow_subgraphs_are_reported_and_not_edited(rng):
    model, w = control_flow_model(rng)
    scan = scan_graph(model)
    assert [o.node_name for o in scan.editable] == ["main"]
    assert scan.editable[0].shared  # W is also read inside the subgraphs
    skipped = {s.node_name: s for s in scan.skipped}
    assert set(skipped) == {"branch/then_branch/then_mm", "repeat/body/loop_gemm", "rows/body/scan_mm"}
    assert "subgraph of If node branch" in skipped["branch/then_branch/then_mm"].reason
    assert skipped["repeat/body/loop_gemm"].op_type == "Gemm"
    x = rng.normal(size=(5, 4)).astype(np.float32)
    collect(model, scan.editable, Dataset(x, np.array([0, 1, 0, 1, 0])), gram_classes=[0])  # taps run fine
    q = basis(rng, 4, 1)
    edited, (plan,) = edit(model, {"main": (q, 1.0)})
    assert plan.own_copy and np.array_equal(init_value(edited, "W"), w)  # subgraphs keep the original W
    h = x @ projector(4, q, 1.0) @ w
    y_if, y_loop, y_sum, y_rows = run_all(edited, x)
    assert np.allclose(y_if, h @ w, atol=1e-4) and np.allclose(y_loop, h @ w @ w, atol=1e-4)
    assert np.allclose(y_rows, h @ w, atol=1e-4) and np.allclose(y_sum, (h @ w).sum(0), atol=1e-4)


def test_operators_in_model_local_functions_are_reported(rng):
    w = rng.normal(size=(4, 3)).astype(np.float32)
    body = [helper.make_node("MatMul", ["a", "b"], ["ab"], name="fn_mm"),
            helper.make_node("Relu", ["ab"], ["out"], name="fn_relu")]
    fn = helper.make_function("local", "Block", ["a", "b"], ["out"], body, [helper.make_opsetid("", OPSET)])
    graph = helper.make_graph([helper.make_node("Block", ["x", "W"], ["y"], name="block", domain="local")], "fn",
                              [helper.make_tensor_value_info("x", F32, ["N", 4])],
                              [helper.make_tensor_value_info("y", F32, ["N", 3])], [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", OPSET),
                                                                     helper.make_opsetid("local", 1)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    scan = scan_graph(model)
    assert not scan.editable
    (skip,) = scan.skipped
    assert skip.node_name == "local:Block/fn_mm" and "model-local function local:Block" in skip.reason
    x = rng.normal(size=(2, 4)).astype(np.float32)
    assert np.allclose(run(model, x), np.maximum(x @ w, 0), atol=1e-5)


# ---------------------------------------------------------------------------------------- 4. float16
def fp16_cnn(rng, cin=3, cout=4, classes=3):
    """conv_model's tiny CNN with float16 weights, input and activations."""
    model, p = conv_model(rng, cin=cin, cout=cout, classes=classes)
    inits = {k: v.astype(np.float16) for k, v in p.items()}
    nodes = list(model.graph.node)
    return make_model(nodes, [helper.make_tensor_value_info("x", F16, ["N", cin, 6, 6])],
                      [helper.make_tensor_value_info("y", F16, ["N", classes])], inits)


def test_float16_weight_is_edited_in_float64_and_stored_as_float16(rng):
    model, w = gemm_model(rng, d=D, trans_b=1)
    model = make_model(list(model.graph.node), [helper.make_tensor_value_info("x", F16, ["N", D])],
                       [helper.make_tensor_value_info("y", F16, ["N", 3])],
                       {"w": w.astype(np.float16), "b": init_value(model, "b").astype(np.float16)})
    q = basis(rng, D, 2)
    edited, _ = edit(model, {"gemm": (q, 0.6)})
    w16 = init_value(edited, "w")
    expected = (w.astype(np.float16).astype(np.float64) @ projector(D, q, 0.6)).astype(np.float16)
    assert w16.dtype == np.float16 and np.array_equal(w16, expected)
    x = rng.normal(size=(4, D)).astype(np.float16)
    ref = x.astype(np.float32) @ expected.astype(np.float32).T + init_value(edited, "b").astype(np.float32)
    assert np.allclose(run(edited, x).astype(np.float32), ref, atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("precision, tol", [("float32", 1e-6), ("float64", 1e-12)])
def test_float16_statistics_are_reduced_in_float32_or_float64(rng, precision, tol):
    """float16 activations are cast (exactly) to float32 or float64 before any reduction, never summed in float16."""
    model = fp16_cnn(rng)
    x = rng.normal(size=(6, 3, 6, 6)).astype(np.float16)
    y = np.array([0, 1, 2, 0, 1, 2])
    conv = collect(model, scan_graph(model).editable, Dataset(x, y), gram_classes=[0],
                   precision=precision).layers["conv"]
    rows0 = x[y == 0].transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    for got, want in ((conv.sums[0], rows0.sum(0)), (conv.grams[0], rows0.T @ rows0)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_forget_runs_end_to_end_on_a_float16_model(rng):
    model = fp16_cnn(rng)
    y = np.arange(90) % 3
    shift = y[:, None, None, None] * np.array([1.0, -1.0, 0.5])[:, None, None]  # a class signal per channel
    x = (rng.normal(size=(90, 3, 6, 6)) + shift).astype(np.float16)
    result = onnx_damp.forget(model, (x, y), [1], max_passes=2)
    onnx.checker.check_model(result.model)
    assert all(t.data_type == F16 for t in result.model.graph.initializer if t.name in ("w", "fc", "b", "fb"))
    assert result.model.graph.input[0].type.tensor_type.elem_type == F16
    assert all(np.isfinite(v) for v in result.relative_change.values())
    assert max(result.relative_change.values()) > 0
    assert np.all(np.isfinite(run(result.model, x).astype(np.float32)))


# ------------------------------------------------------------------------------------ 5. readable names
SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "mnist" / "model.onnx"


def test_scope_of_the_shipped_sample_names_the_torch_module():
    """The dynamo exporter's name_scopes give each operator its module path; BatchNorm folded into the Conv
    leaves the BatchNorm's scope in the metadata, and the weight's parameter name restores the Conv's."""
    result = onnx_damp.inspect(str(SAMPLE))
    first, head = result.editable[0], result.editable[-1]
    assert first.op_type == "Conv" and first.scope == "stem.0"
    assert head.op_type == "Gemm" and head.scope == "fc"
    assert all(o.scope for o in result.editable)
    assert result.to_dict()["editable"][0]["scope"] == "stem.0"
    header = inspect_table(result).splitlines()[1].split()
    assert header[:4] == ["#", "depth", "node", "module"]


def _with_scopes(model, node, value):
    entry = model.graph.node[[n.name for n in model.graph.node].index(node)].metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", value
    return model


@pytest.mark.parametrize("value,scope", [("['', 'features', 'features.3', 'conv2d_1']", "features.3"),
                                         ("['', 'linear']", ""), ("not a list", ""), ("[1, 2]", "")])
def test_scope_from_name_scopes_metadata(rng, value, scope):
    model, _ = conv_model(rng)
    (conv, head) = scan_graph(_with_scopes(model, "conv", value)).editable
    assert conv.scope == scope and head.scope == ""
    assert "module" not in inspect_table(onnx_damp.inspect(conv_model(rng)[0])).splitlines()[1]


@pytest.mark.parametrize("weight,scope", [("block.0.weight", "block.0"), ("block.0.weight_quantized", "block.0"),
                                          ("other.0.weight", "block.1"), ("w", "block.1")])
def test_scope_of_a_fused_operator_follows_its_weight_parameter(weight, scope):
    node = helper.make_node("Conv", ["x", weight], ["y"], name="conv")
    entry = node.metadata_props.add()
    entry.key, entry.value = "pkg.torch.onnx.name_scopes", "['', 'block', 'block.1', 'batch_norm']"
    assert node_scope(node, weight) == scope


# ------------------------------------------------------------------------------------ 6. scikit-learn exports
def sklearn_style_model(rng, d=6, classes=3):
    """skl2onnx's layout: MatMul -> Add -> Softmax, then a label output (ArgMax) first and a ZipMap second."""
    w = (3.0 * np.eye(d, classes) + 0.1 * rng.normal(size=(d, classes))).astype(np.float32)  # a fair classifier
    b = 0.1 * rng.normal(size=classes).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["z"], name="bias"),
             helper.make_node("Softmax", ["z"], ["probabilities"], name="softmax", axis=1),
             helper.make_node("ArgMax", ["probabilities"], ["label"], name="argmax", axis=1, keepdims=0),
             helper.make_node("ZipMap", ["probabilities"], ["output_probability"], name="zipmap",
                              domain="ai.onnx.ml", classlabels_int64s=list(range(classes)))]
    zip_type = helper.make_sequence_type_proto(helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(F32, None)))
    outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
               helper.make_value_info("output_probability", zip_type)]
    return make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", d])], outputs,
                      {"w": w, "b": b}, domains={"ai.onnx.ml": 1})


def test_sklearn_label_and_zipmap_outputs_are_passed_over_for_the_probabilities(rng):
    model = sklearn_style_model(rng)
    y = np.arange(150) % 3
    x = (rng.normal(size=(150, 6)) + 2.0 * np.eye(3, 6)[y]).astype(np.float32)
    result = onnx_damp.forget(model, (x, y), [1])
    assert [o.SerializeToString() for o in result.model.graph.output] == \
        [o.SerializeToString() for o in model.graph.output]  # the written model keeps its outputs
    assert same_nodes(result.model, model)
    before, labels = run(model, x), run(result.model, x)
    assert np.mean(before[y == 1] == 1) > 0.8 and np.mean(labels[y == 1] == 1) < 0.1
    assert np.mean(labels[y != 1] == y[y != 1]) > np.mean(before[y != 1] == y[y != 1]) - 0.1
