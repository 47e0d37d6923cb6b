"""The generalising method: held-out selection, the readout stage, wide layers, graph facts from data flow."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_damp import api
from onnx_damp.method import readout as ro
from onnx_damp.method.plan import plan
from onnx_damp.data.dataset import Dataset
from onnx_damp.errors import DampError
from onnx_damp.ops.graph import scan_graph
from onnx_damp.method.selection import HeldOutScore, pick, score, split_holdout
from onnx_damp.stats.collector import collect
from onnx_damp.method.pipeline import damp_edit
from onnx_damp.options import MethodOptions

from tiny_models import make_model

CLASSES, DIM = 5, 8


def mlp(rng, means: np.ndarray, hidden_offset: float = 10.0) -> onnx.ModelProto:
    """Gemm(I, +offset) -> Relu -> Gemm: a nearest-class-mean classifier whose hidden layer stays linear."""
    d = means.shape[1]
    w2 = means.astype(np.float32)
    b2 = (-0.5 * (means ** 2).sum(1) - hidden_offset * means.sum(1)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="head", transB=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", d])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", len(means)])],
                      {"w1": np.eye(d, dtype=np.float32), "b1": np.full(d, hidden_offset, np.float32),
                       "w2": w2, "b2": b2})


def clusters(rng, means: np.ndarray, per_class: int, noise: float = 1.0) -> Dataset:
    y = np.repeat(np.arange(len(means)), per_class)
    x = means[y] + noise * rng.normal(size=(len(y), means.shape[1]))
    return Dataset(x.astype(np.float32), y.astype(np.int64))


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.asarray(x, np.float32)})[0]


@pytest.fixture
def setup():
    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, DIM)) * 1.2
    return mlp(rng, means), means, clusters(rng, means, 100), clusters(rng, means, 200)


# ------------------------------------------------------------------------------------------------ split
def test_split_holdout_is_per_class_disjoint_and_deterministic():
    y = np.repeat(np.arange(4), [50, 50, 7, 30])
    fit, held = split_holdout(y, 0.2)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(y)
    assert [int(np.sum(y[held] == c)) for c in range(4)] == [10, 10, 0, 6]  # 7 images: too few to split
    again = split_holdout(y, 0.2)
    assert np.array_equal(fit, again[0]) and np.array_equal(held, again[1])


def test_split_holdout_caps_the_held_out_images_of_a_large_class():
    y = np.repeat(np.arange(2), [5000, 400])
    fit, held = split_holdout(y, 0.2, max_holdout=256)
    assert [int(np.sum(y[held] == c)) for c in range(2)] == [256, 80]
    assert len(fit) + len(held) == len(y)
    first = np.flatnonzero(y[held] == 0)
    assert held[first].min() < 50 and held[first].max() > 4950   # spread over the whole class


def test_pick_prefers_lowest_forget_accuracy_within_the_guards():
    ok = HeldOutScore(0.05, 0.9, {1: 0.0, 2: 0.01})
    stronger_but_costly = HeldOutScore(0.0, 0.8, {1: 0.0, 2: 0.2})  # forgets more, costs class 2 20 points
    assert pick([stronger_but_costly, ok]) == 1
    assert pick([ok, HeldOutScore(0.01, 0.9, {1: 0.0, 2: 0.0})]) == 1
    assert pick([stronger_but_costly, HeldOutScore(0.5, 0.7, {1: 0.1, 2: 0.1})]) == 1  # none within: smallest drop


def test_score_counts_per_class_drops_against_the_original():
    y = np.array([0, 0, 1, 1, 2, 2])
    sc = score(np.array([1, 1, 1, 2, 2, 2]), y, [0], {0: 1.0, 1: 1.0, 2: 1.0})
    assert sc.forget_accuracy == 0.0 and sc.class_drops == {1: 0.5, 2: 0.0} and sc.worst == (1, 0.5)
    assert not sc.within_guards()


# ---------------------------------------------------------------------------------------------- readout
def test_readout_shift_formula():
    m_f = np.array([[2.0], [4.0], [9.0]])
    m_r = np.array([[-6.0], [-4.0]])
    assert ro.readout_shift(m_f, m_r)[0] == pytest.approx(max(5.0 - (-5.0), 9.0))
    assert ro.readout_shift(np.array([[-3.0]]), np.array([[-2.0]]))[0] == 0.0  # already below: no shift


def test_readout_tail_term_covers_unseen_forget_images_beyond_the_held_out_max():
    assert ro.tolerance_factor(60, 0.01) == pytest.approx(2.80, abs=0.01)  # tables: n=60, 99% coverage, 95%
    assert ro.tolerance_factor(10 ** 6, 0.01) == pytest.approx(2.326, abs=0.01)  # tends to the normal quantile
    assert ro.tolerance_factor(60, 0.0) == float("inf")
    rng = np.random.default_rng(0)
    m_f, m_r = rng.normal(-1.5, 1.0, (60, 1)), rng.normal(-0.5, 1.0, (200, 1))  # gap < 0: the tail decides
    t = ro.readout_shift(m_f, m_r, 0.01)[0]
    assert t > ro.readout_shift(m_f, m_r)[0] == pytest.approx(m_f.max())
    unseen = rng.normal(-1.5, 1.0, 100_000)
    assert np.mean(unseen > m_f.max()) > 0.02 and np.mean(unseen > t) < 0.005  # this draw: the max leaves 2.5%


def test_class_shifts_read_each_forget_class_from_its_own_images():
    rng = np.random.default_rng(1)
    own = rng.normal(0.0, 1.0, 60)       # class 1's images on channel 1
    other = rng.normal(-6.0, 3.0, 60)    # class 2's images on channel 1: never counted as 1
    m = np.zeros((220, 2))
    m[:60, 0], m[60:120, 0] = own, other
    m[:120, 1] = rng.normal(0.0, 1.0, 120)
    m[120:] = -10.0                      # retain images
    y = np.array([1] * 60 + [2] * 60 + [0] * 100)
    t = ro.class_shifts(m, y, [1, 2], 0.01)
    assert t[0] == pytest.approx(ro.readout_shift(own[:, None], m[120:, [0]], 0.01)[0])
    assert t[0] > ro.readout_shift(m[:120, [0]], m[120:, [0]], 0.01)[0]  # mixed in, class 2 would lower it
    absent = ro.class_shifts(m[60:], y[60:], [1, 2], 0.01)  # no image of class 1: every forget image decides
    assert absent[0] == pytest.approx(ro.readout_shift(m[60:120, [0]], m[120:, [0]], 0.01)[0])


def test_log_scores_treat_logits_and_probabilities_alike():
    logits = np.array([[2.0, 0.0, -1.0]])
    probs = np.exp(logits) / np.exp(logits).sum()
    assert np.allclose(ro.log_scores(logits), ro.log_scores(probs))


def test_readout_keeps_retain_logits_on_retain_prototypes_and_removes_the_class(setup):
    model, means, calib, test = setup
    forget, retain = [0], list(range(1, CLASSES))
    ops = scan_graph(model).editable
    out = damp_edit(model, ops, calib, forget, retain)
    assert out.readout is not None and out.readout.applied, out.readout
    protos = np.stack([out.first_stats.layers["fc1"].mean(c) for c in retain])  # the prototypes the edit kept
    before, after = run(model, protos), run(out.model, protos)
    assert np.allclose(after[:, retain], before[:, retain], atol=1e-4)
    assert not np.allclose(after[:, forget], before[:, forget], atol=1e-2)  # the forget logit did move
    pred = run(out.model, test.x).argmax(1)
    assert np.mean(pred[test.y == 0] == 0) == 0.0
    # the representation edit alone (the paper's form) is a different, weaker model
    rep = run(out.representation, test.x).argmax(1)
    assert np.mean(rep[test.y == 0] == 0) >= np.mean(pred[test.y == 0] == 0)


def test_readout_widens_the_shift_until_no_held_out_forget_image_reads_as_the_class():
    """The shift is doubled while a held-out forget image keeps its class (not only until the target is met)."""
    from onnx_damp.method.pipeline import _widened
    from onnx_damp.ops.weights import BiasRef

    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                       {"w": np.eye(3, dtype=np.float32), "b": np.zeros(3, np.float32)})
    x = np.array([[2, 0, 0]] * 98 + [[4, 0, 0], [0.5, 0, 0], [0, 2, 0], [0, 0, 2]], np.float32)  # margins 2, 4, 0.5
    y = np.array([0] * 100 + [1, 2])
    held, ref = Dataset(x, y), BiasRef("b", 1.0, 3)
    base = {0: 1.0, 1: 1.0, 2: 1.0}
    _, _, sc, shift = _widened(model, ref, [0], np.array([2.5]), held, base, "cpu", None, None)
    assert sc.forget_accuracy == 0.0 and shift[0] == pytest.approx(5.0)  # 2.5 leaves 1% (the 4.0): doubled once
    assert sc.worst[1] == 0.0
    _, _, sc, shift = _widened(model, ref, [0], np.array([2.5]), held, base, "cpu", None, None, tries=1)
    assert sc.forget_accuracy == pytest.approx(0.01) and shift[0] == 2.5


def test_readout_off_returns_the_representation_edit(setup):
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    out = damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), MethodOptions(readout=False))
    assert out.readout is None and out.model is out.representation


def test_a_worse_later_pass_is_not_kept(setup):
    """Pass 2's statistics are wrong (labels swapped): its edit removes a retain class; the held-out images
    see it and the tool keeps pass 1."""
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    calls = []

    def collector(m, ops_, data, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second pass: forget class 0 and retain class 1 swapped
            y = data.y.copy()
            y[data.y == 0], y[data.y == 1] = 1, 0
            data = Dataset(np.asarray(data.x[:]), y)
        return collect(m, ops_, data, *args, **kwargs)

    opts = MethodOptions(max_passes=2, target_forget_accuracy=-1.0, readout=False, candidates=False)
    out = damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), opts, collector=collector)  # pass 2: plain plan
    assert len(calls) == 2 and len(out.passes) == 1
    assert any("pass 2 was not kept" in n for n in out.notes)
    # what it kept is pass 1's model, and that model is better on the held-out images than pass 2's would be
    assert out.heldout_score.worst[1] < 0.2


# ------------------------------------------------------------------------------------------- wide layers
def test_wide_layer_plan_equals_the_full_plan(setup):
    """Second moments within the prototypes' span give exactly the full-Gram Q and alpha (no extra directions)."""
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    full = plan(ops, collect(model, ops, calib, None), [0], list(range(1, CLASSES)), extra_directions=False)
    wide_stats = collect(model, ops, calib, None, wide_dim=4)
    assert all(st.wide and st.total_gram is None for st in wide_stats.layers.values())
    wide = plan(ops, wide_stats, [0], list(range(1, CLASSES)), extra_directions=False)
    for a, b in zip(full, wide):
        assert a.rank == b.rank
        assert np.allclose(np.abs(a.q.T @ b.q), np.eye(a.rank), atol=1e-8)
        assert a.alpha == pytest.approx(b.alpha, abs=1e-6)


def test_wide_moments_from_kept_rows_equal_the_second_pass(setup, monkeypatch):
    """A wide layer read one row per image keeps its input rows through the one pass (the graph input itself
    for fc1): its moments within the prototypes' span equal those of a second pass over the data (float64,
    to rounding), and no second graph is built; a budget too small for a layer's rows leaves that layer to the
    second pass, or to a temporary file (spilled) where the disk has room: the same numbers as in memory, bit for
    bit, and still no second graph."""
    import onnx_damp.stats.collector as sc
    from onnx_damp.stats.collector import kept_row_inputs

    graphs = []
    real = sc.instrument
    monkeypatch.setattr(sc, "instrument", lambda *a, **k: graphs.append(1) or real(*a, **k))  # a spy: counts
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    one = collect(model, ops, calib, [0], wide_dim=4, outputs=True)  # the model's outputs kept as well
    assert len(graphs) == 1 and one.outputs.shape == (len(calib.y), CLASSES)
    spilled = collect(model, ops, calib, [0], wide_dim=4, rows_budget=0)
    assert len(graphs) == 2
    two = collect(model, ops, calib, [0], wide_dim=4, rows_budget=0, spill=False)
    assert len(graphs) == 4
    for name, a in one.layers.items():
        b = two.layers[name]
        assert a.wide and b.wide and np.array_equal(a.basis, b.basis) and a.projected.rows == b.projected.rows
        for c in a.projected.sums:
            np.testing.assert_allclose(a.projected.sums[c], b.projected.sums[c], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(a.projected.grams[c], b.projected.grams[c], rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(a.projected.total_gram, b.projected.total_gram, rtol=1e-12, atol=1e-9)
        s = spilled.layers[name].projected
        assert all(np.array_equal(a.projected.grams[c], s.grams[c]) for c in a.projected.grams)
        assert np.array_equal(a.projected.total_gram, s.total_gram)
    n, d0 = len(calib.y), ops[0].feature_dim
    rows = {o.input_name for o in ops}
    assert kept_row_inputs(ops, rows, n) == {o.node_name: (o.input_name, False) for o in ops}
    assert kept_row_inputs(ops, rows, n, budget=4 * n * d0) == {ops[0].node_name: (ops[0].input_name, False),
                                                               ops[1].node_name: (ops[1].input_name, True)}
    assert kept_row_inputs(ops, rows, n, budget=4 * n * d0, spill=False) == {ops[0].node_name: (ops[0].input_name,
                                                                                                False)}
    assert kept_row_inputs(ops, rows - {ops[0].input_name}, n) == {ops[1].node_name: (ops[1].input_name, False)}
    assert kept_row_inputs(ops, rows, 1 << 50) == {}  # no disk holds these rows: the second pass
    assert kept_row_inputs(ops, rows, n, budget=8 * n * d0, spill=False, itemsize=8) == {
        ops[0].node_name: (ops[0].input_name, False)}  # float64 rows: twice the bytes


@pytest.mark.parametrize("shape,one_row", [([-1, 2100], True), ([-1, 1050], False)])
def test_one_row_per_image_is_probed_where_shape_inference_leaves_the_first_dim_open(shape, one_row):
    """A Reshape to [-1, d] (cifar10_winml's head) leaves the batch dim unknown to shape inference: running the
    model on 2 and 3 images tells one row per image (2100 features) from two rows per image (1050)."""
    from onnx_damp.runtime.tokens import batch_rows
    from onnx_damp.stats.collector import statistics_graph

    rng = np.random.default_rng(0)
    d = shape[1]
    nodes = [helper.make_node("Reshape", ["x", "s"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2100])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
                       {"s": np.array(shape, np.int64), "w": rng.normal(size=(d, 3)).astype(np.float32)}, opset=13)
    x = rng.normal(size=(4, 2100)).astype(np.float32)
    ops = scan_graph(model).editable
    assert batch_rows(model, ["r"]) == set()  # inference alone cannot tell
    sg = statistics_graph(model, ops, x, wide_dim=1000)
    assert ("r" in sg.one_rows) == one_row


def test_forget_end_to_end_on_layers_read_one_row_per_image_above_2048_features(tmp_path):
    """The whole forget (statistics with the model's outputs kept, plan, held-out check, validation) on a model
    whose two Gemms read 2,100 features a row: both take the wide path from kept rows, and the class goes."""
    rng = np.random.default_rng(5)
    means = rng.normal(size=(CLASSES, 2100)) * 0.2
    model, calib = mlp(rng, means, hidden_offset=1.0), clusters(rng, means, 60, noise=0.5)
    test = clusters(rng, means, 40, noise=0.5)
    src = tmp_path / "wide.onnx"
    onnx.save(model, str(src))
    res = api.forget(str(src), (calib.x, calib.y), [1], output=tmp_path / "out.onnx", eval_data=(test.x, test.y),
                     feature_samples=0)
    assert all(p.note.startswith("wide input (2100 features)") for p in res.passes[0].plans)
    assert res.after.forget_accuracy <= 0.01 and res.after.retain_accuracy >= res.before.retain_accuracy - 0.01


@pytest.mark.parametrize("d,middle,wide", [(2049, (), True), (2048, (), False), (2049, (4,), False),
                                           (2049, (2, 2), False)])
def test_one_row_per_image_layers_above_2048_features_take_the_wide_path(d, middle, wide):
    """A Gemm/MatMul read one row per image ([N, d] by shape inference) gets no d x d Grams above ROW_WIDE_DIM
    features (its moments would rest on about as many rows as features); a MatMul over tokens ([N, T, d]) or
    positions ([N, H, W, d], as Swin's MLPs read them) keeps them up to WIDE_DIM."""
    from onnx_damp.stats.collector import ROW_WIDE_DIM, WIDE_DIM, statistics_graph

    assert ROW_WIDE_DIM == 2048 < d <= WIDE_DIM or not wide
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm")]
    if middle:
        nodes.append(helper.make_node("ReduceMean", ["h"], ["y"], axes=list(range(1, 1 + len(middle))), keepdims=0))
    else:
        nodes[0].output[0] = "y"
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *middle, d])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                       {"w": rng.normal(size=(d, 3)).astype(np.float32)}, opset=13)
    x = rng.normal(size=(4, *middle, d)).astype(np.float32)
    ops = scan_graph(model).editable
    sg = statistics_graph(model, ops, x)
    assert bool(sg.layouts) == (len(middle) == 1)
    assert ("mm" in sg.wide) == wide and ("x" in sg.one_rows) == (not middle and d > ROW_WIDE_DIM)


# ----------------------------------------------------------------------------------------------- graphs
def test_depth_follows_the_data_flow_not_the_file_order(setup, tmp_path):
    model, _, calib, _ = setup
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(reversed(nodes))  # head first, as keras2onnx may write them
    ops = scan_graph(shuffled).editable
    assert [o.node_name for o in ops] == ["fc1", "head"] and ops[-1].depth == 1.0
    src = tmp_path / "shuffled.onnx"
    onnx.save(shuffled, str(src))
    res = api.forget(str(src), (calib.x, calib.y), [0], output=tmp_path / "out.onnx", feature_samples=0)
    assert res.after.forget_accuracy < res.before.forget_accuracy
    assert any("already fails onnx.checker" in n for n in res.notes)


def test_a_classical_ml_model_is_refused_for_what_it_is(tmp_path):
    node = helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                            coefficients=[1.0, -1.0, 0.5, 0.5], intercepts=[0.0, 0.0], classlabels_ints=[0, 1])
    graph = helper.make_graph([node], "skl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
                               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    path = tmp_path / "skl.onnx"
    onnx.save(m, str(path))
    x = np.random.default_rng(0).normal(size=(20, 2)).astype(np.float32)
    with pytest.raises(DampError, match="LinearClassifier from the ai.onnx.ml domain"):
        api.forget(str(path), (x, np.arange(20) % 2), [0], output=tmp_path / "o.onnx")


def test_heldout_warnings_name_the_bound_and_by_how_much():
    from types import SimpleNamespace

    outcome = SimpleNamespace(heldout_score=HeldOutScore(0.05, 0.9, {1: 0.05, 2: 0.0}))
    lines = api.heldout_warnings(outcome, 0.01)
    assert len(lines) == 3
    assert "forget accuracy 5.0% is above the 1.0% target by 4.0 points" in lines[0]
    assert "mean retain accuracy fell 2.5 points" in lines[1] and "retain class 1 fell 5.0 points" in lines[2]
    assert api.heldout_warnings(SimpleNamespace(heldout_score=HeldOutScore(0.0, 0.9, {1: 0.0})), 0.01) == []


def test_cli_prints_the_stages_and_a_warning_line_per_missed_bound(setup, tmp_path):
    from click.testing import CliRunner

    from onnx_damp.cli import main

    model, _, calib, test = setup
    src, data = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(model, str(src))
    np.savez(data, x=calib.x, y=calib.y)
    r = CliRunner().invoke(main, ["forget", str(src), "--data", str(data), "--forget", "0", "-o",
                                  str(tmp_path / "o.onnx"), "--feature-samples", "0", "-q", "-v"])
    assert r.exit_code == 0, r.output
    assert "Stages" in r.output and "+ readout stage" in r.output and "readout: bias b2 of head lowered" in r.output
    rep = tmp_path / "r.json"
    r = CliRunner().invoke(main, ["forget", str(src), "--data", str(data), "--forget", "0", "-o",
                                  str(tmp_path / "o2.onnx"), "--feature-samples", "0", "-q", "-v", "--no-readout",
                                  "--target-forget-acc", "0", "--report", str(rep)])
    report = json.loads(rep.read_text())
    assert r.exit_code == (0 if report["gates"]["passed"] else 3) and "Stages" not in r.output
    warned = [line[len("warning: "):] for line in r.output.splitlines() if line.startswith("warning: ")]
    assert warned == report["warnings"]
    assert (report["heldout"]["score"]["forget_accuracy"] > 0) == any("forget accuracy" in w for w in warned)


class RecordingPhases:
    """A progress.Phases seam that records every phase's label, total and counted work."""

    def __init__(self):
        self.bars = []

    def __call__(self, label, total):
        from onnx_damp.progress import Progress

        bar = Progress(total, label, quiet=True)
        self.bars.append(bar)
        return bar


def test_each_phase_has_its_own_bar_sized_to_its_work(setup):
    """Issue 15: statistics of every pass, the held-out checks (growing with extra candidates), the readout
    and the calibration outputs each get a bar, and each counts exactly the images it planned."""
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    rec = RecordingPhases()
    out = damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), MethodOptions(max_passes=2,
                    target_forget_accuracy=-1.0), phases=rec)
    labels = [b.label for b in rec.bars]
    assert labels == ["statistics", "planning", "held-out check", "statistics, pass 2", "planning, pass 2",
                      "held-out check, pass 2", "readout", "calibration outputs"], labels
    assert all(b.done == b.total > 0 for b in rec.bars), [(b.label, b.done, b.total) for b in rec.bars]
    fit, held = split_holdout(calib.y)
    assert rec.bars[0].total == len(fit) and rec.bars[3].total == len(fit)
    assert rec.bars[1].total == len(ops)                    # one unit per layer planned
    cands = out.passes[0].candidates
    full = sum(c.get("retain_scored", True) for c in cands)
    n_forget = int(np.isin(calib.y[held], [0]).sum())
    # the original and every candidate tried; one that cannot be picked ran on the forget images only, one
    # stopped early on those and the retain images it ran
    stopped = sum(c.get("retain_images_run") or 0 for c in cands)
    assert rec.bars[2].total == len(held) * (1 + full) + n_forget * (len(cands) - full) + stopped


def test_a_candidate_that_cannot_win_skips_the_retain_images(setup):
    """A candidate whose held-out forget accuracy is not below that of one already within the guards
    cannot be picked (ties go to the earlier): it is scored on the forget images only, and never kept."""
    from onnx_damp.method.selection import HeldOutScore, forget_only, pick

    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    out = damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), MethodOptions(max_passes=1))
    cands = out.passes[0].candidates
    kept = next(c for c in cands if c["candidate"] == out.passes[0].candidate)
    assert kept.get("retain_scored", True)
    assert any(not c.get("retain_scored", True) for c in cands)  # this fixture's second candidate ties the first
    for c in cands:
        if not c.get("retain_scored", True):
            assert c["retain_accuracy"] is None and c["forget_accuracy"] >= kept["forget_accuracy"]
    good = HeldOutScore(0.2, 0.9, {1: 0.0})
    assert pick([good, forget_only(0.0)]) == 0          # never picked, even with a lower forget accuracy
    assert pick([HeldOutScore(0.2, 0.9, {1: 0.5}), forget_only(0.0)]) == 0  # nor when nothing is within the guards


def test_a_second_plan_reuses_layer_separabilities_exactly(setup):
    """plan(..., like=) skips the d x d probe per layer; the plans are the same as computed afresh."""
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    stats = collect(model, ops, calib, [0])
    retain = list(range(1, CLASSES))
    first = plan(ops, stats, [0], retain, True)
    fresh, reused = plan(ops, stats, [0], retain, False), plan(ops, stats, [0], retain, False, like=first)
    for a, b in zip(fresh, reused):
        assert a.layer_separability == b.layer_separability and a.alpha == b.alpha
        np.testing.assert_array_equal(a.q, b.q)


def test_plan_variants_equal_separate_plans(setup):
    """plan_variants computes each layer's moments once for both extra-directions flags; every plan equals
    the one plan() makes for that flag alone (nothing of one variant leaks into the other)."""
    from onnx_damp.method.plan import plan_variants

    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    stats = collect(model, ops, calib, [0])
    retain = list(range(1, CLASSES))
    both = plan_variants(ops, stats, [0], retain, (True, False))
    for extra in (True, False):
        for a, b in zip(both[extra], plan(ops, stats, [0], retain, extra)):
            assert (a.alpha, a.separation, a.layer_separability, a.extra_rank) == \
                (b.alpha, b.separation, b.layer_separability, b.extra_rank)
            np.testing.assert_array_equal(a.q, b.q)
    assert len(both[True]) == len(both[False]) == len(ops)


def test_head_rows_ablation_edits_only_the_forget_rows_of_the_head(setup):
    from onnx import numpy_helper

    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    out = damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), MethodOptions(head_rows=True, readout=False))
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in out.model.graph.initializer}
    assert out.passes[0].plans[-1].rows == (0,)
    np.testing.assert_array_equal(after["w2"][1:], before["w2"][1:])     # retain rows of the head untouched
    assert not np.array_equal(after["w2"][0], before["w2"][0])


def _head(tail: "bool | str", bias_type=TensorProto.FLOAT):
    """x -> Gemm(w, b) -> y, or -> z -> tail (True: Softmax) -> y."""
    tail = "Softmax" if tail is True else tail
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["z" if tail else "y"])]
    if tail == "Relu":
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
    elif tail:
        nodes.append(helper.make_node(tail, ["z"], ["y"], axis=1))
    b = np.array([0.0, 0.3, -0.2], np.float16 if bias_type == TensorProto.FLOAT16 else np.float32)
    w = np.array([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.2, 1.0]], np.float32)
    if bias_type == TensorProto.FLOAT16:
        nodes = [helper.make_node("Cast", ["b16"], ["b"], to=TensorProto.FLOAT)] + nodes
        return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], {"w": w, "b16": b})
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], {"w": w, "b": b})


def _held(rng):
    x = (rng.normal(size=(90, 3)) + np.repeat(np.eye(3) * 3, 30, axis=0)).astype(np.float32)
    return Dataset(x, np.repeat(np.arange(3), 30))


@pytest.mark.parametrize("tail", [False, "Softmax", "LogSoftmax"])
def test_shifted_outputs_equal_a_run_of_the_shifted_model(tail):
    """Lowering the forget channels of the bias: the rows computed from the unlowered ones are the rows
    the lowered model gives (identity, Softmax and LogSoftmax tails)."""
    from onnx_damp.method import readout as ro
    from onnx_damp.method.pipeline import _output_tail, _shifted
    from onnx_damp.ops.weights import index_graph, output_bias
    from onnx_damp.runtime.predict import predict

    model, held = _head(tail), _held(np.random.default_rng(4))
    gi = index_graph(model.graph)
    ref = output_bias(gi, scan_graph(model).editable[-1])
    kind = _output_tail(model, gi, ref, None)
    assert kind == (tail.lower() if tail else "identity")
    amount = np.array([2.5, 0.7])
    ran = predict(_shifted(model, ref, [0, 2], amount), held)
    got = ro.shifted_outputs(predict(model, held), [0, 2], amount, kind)
    np.testing.assert_allclose(got, ran, rtol=1e-5, atol=1e-6)


def test_shifted_outputs_refuse_underflowed_probabilities():
    from onnx_damp.method import readout as ro

    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], np.float32)
    assert ro.shifted_outputs(p, [0], np.array([1.0]), "softmax") is None
    assert ro.shifted_outputs(p[1:], [0], np.array([1.0]), "softmax") is not None
    with np.errstate(divide="ignore"):
        assert ro.shifted_outputs(np.log(p), [0], np.array([1.0]), "logsoftmax") is None


def test_readout_computes_what_a_run_finds_without_running():
    """Logits or softmax straight out of the head: probe and tries follow from the held-out outputs; the
    readout that runs the model instead (analytic=False) finds the same gain and shift."""
    from onnx_damp.method.pipeline import _readout
    from onnx_damp.runtime.predict import predict

    held = _held(np.random.default_rng(3))
    for model in (_head(False), _head(True)):
        head = scan_graph(model).editable[-1]
        out = predict(model, held)
        base = {c: float(np.mean(out.argmax(1)[held.y == c] == c)) for c in range(3)}
        before = score(out.argmax(1), held.y, [0], base)
        recs = [_readout(model, out, head, held, [0], [1, 2], base, before, 0.01, "cpu", None, None, analytic=a)
                for a in (True, False)]
        assert all(r.applied for r in recs)
        assert recs[0].gain == pytest.approx(recs[1].gain, abs=1e-5)
        assert recs[0].shift == pytest.approx(recs[1].shift, rel=1e-4)
        np.testing.assert_allclose(recs[0].outputs, recs[1].outputs, rtol=1e-4, atol=1e-5)


def test_output_tail_only_where_rows_follow_from_the_outputs():
    from onnx_damp.method.pipeline import _output_tail
    from onnx_damp.ops.weights import BiasRef, index_graph

    direct = _head(False)
    assert _output_tail(direct, index_graph(direct.graph), BiasRef("b", 1.0, 3, "y"), None) == "identity"
    assert _output_tail(direct, index_graph(direct.graph), BiasRef("b", 1.0, 3, "y"), "other") is None
    half = _head(False, TensorProto.FLOAT16)
    assert _output_tail(half, index_graph(half.graph), BiasRef("b16", 1.0, 3, "y"), None) is None
    relu = _head("Relu")
    assert _output_tail(relu, index_graph(relu.graph), BiasRef("b", 1.0, 3, "z"), None) is None


WEAK_FIRST = (("damp, quarter strength", True, 0.25), ("damp", True, 1.0))  # the second forgets more


@pytest.mark.parametrize("forget,first", [([0], None), ([1], None), ([2], None), ([0, 3], None),
                                          ([0], WEAK_FIRST), ([2], WEAK_FIRST), ([0, 3], WEAK_FIRST)])
def test_lazy_candidate_scoring_picks_what_scoring_each_in_turn_picks(setup, forget, first):
    """The first candidates run on the held-out forget images first and on the retain images in order of
    forget accuracy: the kept candidate, its score and its output rows are those of scoring one after the other,
    and no more images are run (fewer where a later candidate forgets more and is within the guards)."""
    from onnx_damp.data.dataset import subset
    from onnx_damp.method.pipeline import _best_candidate
    from onnx_damp.progress import Progress
    from onnx_damp.runtime.predict import predict
    from onnx_damp.verify.metrics import per_class_accuracy

    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    retain = [c for c in range(CLASSES) if c not in forget]
    fit, held_idx = split_holdout(calib.y)
    stats = collect(model, ops, subset(calib, fit), forget)
    held = subset(calib, held_idx)
    base = per_class_accuracy(predict(model, held, 256).argmax(1), held.y)
    run = {"device": "cpu", "input_name": None, "output_name": None, "batch_size": 128}
    got = {}
    for lazy in (True, False):
        bar = Progress(0, "held-out check", quiet=True)
        edited, sc, rec, out = _best_candidate(model, ops, stats, held, forget, retain, base, True, "energy", True,
                                               run, 0.01, bar, lazy=lazy, first=first)
        got[lazy] = (rec.candidate, sc, out, bar.done, rec.candidates)
    assert got[True][0] == got[False][0]
    assert got[True][1].to_dict() == got[False][1].to_dict()
    np.testing.assert_array_equal(got[True][2], got[False][2])
    assert got[True][3] <= got[False][3]
    if first is not None:  # the weak first candidate's retain images were not run
        n_retain = int((~np.isin(held.y, forget)).sum())
        assert got[True][3] == got[False][3] - n_retain
        assert got[True][4][0]["retain_scored"] is False and got[False][4][0].get("retain_scored", True)


def test_column_median_and_label_values_match_numpy():
    """The start-up-light stand-ins for np.median(axis=0) and np.unique give numpy's values exactly."""
    from onnx_damp.data.dataset import label_values
    from onnx_damp.method.readout import column_median

    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 6, 101):
        a = rng.standard_normal((n, 4))
        assert np.array_equal(column_median(a), np.median(a, axis=0))
    assert np.isnan(column_median(np.zeros((0, 3)))).all() and column_median(np.zeros((0, 3))).shape == (3,)
    y = rng.integers(0, 7, 50)
    assert np.array_equal(label_values(y), np.unique(y))


# ------------------------------------------------------------------------------------- early rejection


def test_retain_order_puts_the_originals_misses_first_then_classes_in_turn():
    from onnx_damp.method.selection import retain_order

    y = np.array([1, 1, 1, 2, 2, 2, 3, 3, 0])
    pred = np.array([1, 0, 1, 2, 2, 2, 3, 1, 0])    # misses: index 1 (class 1) and 7 (class 3)
    ridx = np.arange(8)                              # class 0 is the forget class
    order = retain_order(y, ridx, pred)
    assert sorted(order.tolist()) == ridx.tolist()
    assert order[:2].tolist() == [1, 7]
    assert y[order[2:]].tolist() == [1, 2, 3, 1, 2, 2]   # hits: two of class 1, three of class 2, one of 3


@pytest.mark.parametrize("seed", range(40))
def test_retain_guard_never_stops_a_candidate_the_full_score_keeps(seed):
    """Sound: whenever the guard says breached, the full score is outside the guards; and a candidate that loses
    many images of one class is stopped before all its retain images run."""
    from onnx_damp.method.selection import RetainGuard, retain_order

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, 400)
    orig = np.where(rng.random(400) < 0.8, y, rng.integers(0, 5, 400))
    flip = rng.random(400) < rng.choice([0.0, 0.01, 0.03, 0.1, 0.3])
    cand = np.where(flip, (y + 1) % 5, np.where(rng.random(400) < 0.05, y, orig))
    forget = [0]
    ridx = np.flatnonzero(y != 0)
    base = per_class_accuracy_(orig, y)
    full = score(cand, y, forget, base)
    guard = RetainGuard(y[ridx], base)
    order = retain_order(y, ridx, orig)
    stopped_at = None
    for chunk in np.array_split(order, 20):
        guard.add(y[chunk], cand[chunk])
        if guard.breached():
            stopped_at = guard.run
            break
    if stopped_at is not None:
        assert not full.within_guards()
        rejected = guard.rejected_score(full.forget_accuracy)
        assert not rejected.within_guards() and rejected.rejected
        for c, lb in rejected.class_drops.items():
            assert lb <= full.class_drops[c] + 1e-12
        d = json.loads(json.dumps(rejected.to_dict()))
        assert d["rejected_early"] and isinstance(d["worst_retain_class_so_far"], int)
        assert d["rejected_early"] and d["retain_images_run"] == stopped_at and d["retain_accuracy"] is None
    if full.worst[1] > 0.25:
        assert stopped_at is not None and stopped_at < len(ridx)


def per_class_accuracy_(pred, y):
    from onnx_damp.verify.metrics import per_class_accuracy
    return per_class_accuracy(pred, y)


def overlapping_heldout(forget: list[int]) -> tuple:
    """The early-rejection tests' setting: an MLP on overlapping classes (edits cost some retain accuracy), its
    editable ops, the fit part's statistics, the held-out part, the retain classes, the original's held-out
    predictions and the run options."""
    from onnx_damp.data.dataset import subset
    from onnx_damp.runtime.predict import predict

    rng = np.random.default_rng(0)
    means = rng.normal(size=(CLASSES, DIM)) * 1.2
    model, calib = mlp(rng, means), clusters(rng, means, 400, noise=2.0)
    ops = scan_graph(model).editable
    fit, held_idx = split_holdout(calib.y)
    held = subset(calib, held_idx)
    return (model, ops, collect(model, ops, subset(calib, fit), forget), held,
            [c for c in range(CLASSES) if c not in forget], predict(model, held, 256).argmax(1),
            {"device": "cpu", "input_name": None, "output_name": None, "batch_size": 128})


@pytest.mark.parametrize("forget", [[0], [1], [3], [0, 3]])
@pytest.mark.parametrize("by_margin", [False, True])
def test_early_rejection_picks_what_full_scoring_picks(forget, by_margin):
    """With the original's held-out predictions, a candidate's retain images stop once the guards are sure to
    fail: the kept candidate, its score and its output rows are those of scoring every candidate whole, and no
    more images are run (fewer where a candidate was stopped); by_margin: its hits run from the original's
    smallest margin up (the same pick and score)."""
    from onnx_damp.method.pipeline import _best_candidate
    from onnx_damp.method.selection import top_margin
    from onnx_damp.progress import Progress
    from onnx_damp.runtime.predict import predict
    from onnx_damp.verify.metrics import per_class_accuracy

    model, ops, stats, held, retain, orig, run = overlapping_heldout(forget)
    base = per_class_accuracy(orig, held.y)
    margin = top_margin(predict(model, held, 256)) if by_margin else None
    got = []
    for original_pred in (None, orig):
        bar = Progress(0, "held-out check", quiet=True)
        edited, sc, rec, out = _best_candidate(model, ops, stats, held, forget, retain, base, True, "energy", True,
                                               run, 0.01, bar, original_pred=original_pred,
                                               original_margin=margin if original_pred is not None else None)
        got.append((rec.candidate, sc.to_dict(), out, bar.done, bar.total, rec.candidates))
    assert got[0][0] == got[1][0] and got[0][1] == got[1][1]
    np.testing.assert_array_equal(got[0][2], got[1][2])
    assert got[1][3] == got[1][4]                        # the bar counts exactly what ran
    stopped = [c for c in got[1][5] if c.get("rejected_early")]
    assert got[1][3] <= got[0][3] - sum(len(held) - int(np.isin(held.y, forget).sum()) - c["retain_images_run"]
                                        for c in stopped)
    if forget == [1]:  # this data's class 1: the first two candidates break the guards early
        assert len(stopped) == 2 and got[1][3] < got[0][3]


def test_smallest_margins_first_stop_a_failing_candidate_sooner():
    """forget 1 on the overlapping MLP: the two first candidates break the guards; run from the original's
    smallest margins up, their retain images stop after fewer images than in file order."""
    from onnx_damp.method.pipeline import _best_candidate
    from onnx_damp.method.selection import top_margin
    from onnx_damp.progress import Progress
    from onnx_damp.runtime.predict import predict
    from onnx_damp.verify.metrics import per_class_accuracy

    model, ops, stats, held, retain, orig, run = overlapping_heldout([1])
    base = per_class_accuracy(orig, held.y)
    runs = {}
    for by_margin in (False, True):
        margin = top_margin(predict(model, held, 256)) if by_margin else None
        _, sc, rec, _ = _best_candidate(model, ops, stats, held, [1], retain, base, True, "energy", True, run,
                                        0.01, Progress(0, "held-out check", quiet=True), original_pred=orig,
                                        original_margin=margin)
        runs[by_margin] = (rec.candidate, sc.to_dict(),
                           [c["retain_images_run"] for c in rec.candidates if c.get("rejected_early")])
    assert runs[True][:2] == runs[False][:2]
    assert len(runs[True][2]) == len(runs[False][2]) == 2 and sum(runs[True][2]) < sum(runs[False][2])


def test_top_margin_and_the_margin_order():
    from onnx_damp.method.selection import retain_order, top_margin

    out = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.5], [1.0, 1.0, 0.0], [2.0, 0.0, -1.0]])
    np.testing.assert_allclose(top_margin(out), [1.0, 0.5, 0.0, 2.0])
    assert top_margin(np.ones((2, 1))).tolist() == [0.0, 0.0]
    y = np.array([1, 1, 1, 2, 2, 0])
    pred = np.array([1, 0, 1, 2, 2, 0])          # index 1 missed
    margin = np.array([5.0, 0.1, 0.2, 0.3, 0.05, 1.0])
    assert retain_order(y, np.arange(5), pred, margin).tolist() == [1, 2, 4, 0, 3]  # miss, then hits by margin


def test_without_the_layer_probe_the_edit_is_the_same(setup):
    """layer_probe=False (the CLI's default when nothing shows the per-layer table) skips only the reported
    whole-space separability: the same candidate, subspaces, alphas and edited weights."""
    model, _, calib, _ = setup
    ops = scan_graph(model).editable
    runs = [damp_edit(model, ops, calib, [0], list(range(1, CLASSES)), MethodOptions(layer_probe=probe))
            for probe in (True, False)]
    (a, b) = runs
    assert a.passes[0].candidate == b.passes[0].candidate
    for pa, pb in zip(a.passes[0].plans, b.passes[0].plans):
        np.testing.assert_array_equal(pa.q, pb.q)
        assert pa.alpha == pb.alpha and pa.separation == pb.separation
        assert isinstance(pa.layer_separability, float) and pb.layer_separability is None
    for ia, ib in zip(a.model.graph.initializer, b.model.graph.initializer):
        assert ia.SerializeToString() == ib.SerializeToString()
    json.dumps(b.passes[0].to_dict())


def test_when_no_candidate_keeps_the_guards_the_stopped_ones_are_finished_not_rerun():
    """Where nothing keeps the guards, pick reads the full drops: each stopped candidate runs the images it did
    not run (no image twice), so the images run are those of scoring every candidate whole; a single candidate
    (no choice to make) is never stopped."""
    from onnx_damp.method.pipeline import _best_candidate
    from onnx_damp.progress import Progress
    from onnx_damp.verify.metrics import per_class_accuracy

    forget = [1]
    model, ops, stats, held, retain, orig, run = overlapping_heldout(forget)
    assert retain == [0, 2, 3, 4]
    strict = {c: a + 0.5 for c, a in per_class_accuracy(orig, held.y).items()}  # every class "drops" 0.5 or more
    for use_candidates in (True, False):
        got = []
        for original_pred in (None, orig):
            bar = Progress(0, "held-out check", quiet=True)
            _, sc, rec, out = _best_candidate(model, ops, stats, held, forget, retain, strict, True, "energy",
                                              use_candidates, run, 0.01, bar, original_pred=original_pred)
            got.append((rec.candidate, sc.to_dict(), out, bar.done, bar.total, rec.candidates))
        assert not any(c.get("rejected_early") for c in got[1][5])
        assert all(c.get("retain_scored", True) for c in got[1][5])  # every one scored whole in the end
        assert got[0][0] == got[1][0] and got[0][1] == got[1][1] and got[0][3] == got[1][3] == got[1][4]
        np.testing.assert_array_equal(got[0][2], got[1][2])


# ------------------------------------------------------------------------- one session fed every candidate


@pytest.mark.parametrize("forget", [[0], [1], [0, 3]])
def test_candidates_on_one_fed_session_pick_score_and_output_as_one_session_each(forget, monkeypatch):
    """A MatMul/Gemm model's candidates run on one session fed each candidate's weights: the kept candidate,
    every candidate's score, the output rows and the images run are those of a session per candidate, and
    exactly one fed session was made (none with share_sessions=False)."""
    import onnx_damp.method.pipeline as pl
    from onnx_damp.progress import Progress
    from onnx_damp.runtime.predict import weight_fed_session
    from onnx_damp.verify.metrics import per_class_accuracy

    made = []
    monkeypatch.setattr(pl, "weight_fed_session", lambda *a, **k: made.append(1) or weight_fed_session(*a, **k))
    model, ops, stats, held, retain, orig, run = overlapping_heldout(forget)  # [1]: two candidates stopped early
    base = per_class_accuracy(orig, held.y)
    got = []
    for share in (False, True):
        bar = Progress(0, "held-out check", quiet=True)
        edited, sc, rec, out = pl._best_candidate(model, ops, stats, held, forget, retain, base, True, "energy", True,
                                                  run, 0.01, bar, original_pred=orig, share_sessions=share)
        got.append((rec.candidate, sc.to_dict(), out, bar.done, rec.candidates, edited.SerializeToString()))
        assert len(made) == int(share)
    assert got[0][0] == got[1][0] and got[0][1] == got[1][1] and got[0][3] == got[1][3]
    assert got[0][4] == got[1][4] and got[0][5] == got[1][5]
    np.testing.assert_array_equal(got[0][2], got[1][2])


def test_fed_weights_are_the_own_float_matmul_and_gemm_weights():
    """Which weights one session may be fed: a Gemm's own initializer, not a Conv's (onnxruntime's blocked
    layout needs a constant), not a weight two nodes share; a fed session's outputs are the edited model's."""
    from onnx_damp.method.pipeline import _fed_weights
    from onnx_damp.ops.weights import index_graph
    from onnx_damp.runtime.predict import FedWeights, prediction_session, weight_fed_session as fed_session
    from tiny_models import conv_model

    rng = np.random.default_rng(3)
    means = rng.normal(size=(CLASSES, DIM))
    model = mlp(rng, means)
    ops = scan_graph(model).editable
    assert _fed_weights(model, index_graph(model.graph), ops) == {"fc1": "w1", "head": "w2"}
    cnn, _ = conv_model(rng)
    cops = scan_graph(cnn).editable
    assert set(_fed_weights(cnn, index_graph(cnn.graph), cops)) == {o.node_name for o in cops if o.op_type == "Gemm"}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="second")]  # one weight, two readers
    shared = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                        {"W": rng.normal(size=(4, 4)).astype(np.float32)})
    sops = scan_graph(shared).editable
    assert len(sops) == 2 and _fed_weights(shared, index_graph(shared.graph), sops) == {}
    data = clusters(rng, means, 20)
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    w1 = next(t for t in edited.graph.initializer if t.name == "w1")
    w1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w1) * 0.5, "w1"))
    own = prediction_session(edited, data).run(None, {"x": data.x})[0]
    sess = fed_session(model, ["w1", "w2"], data)
    view = FedWeights(sess, {t.name: numpy_helper.to_array(t) for t in edited.graph.initializer if t.name in ("w1", "w2")})
    np.testing.assert_array_equal(view.run(None, {"x": data.x})[0], own)
    assert [i.name for i in view.get_inputs()] == ["x"]


def test_every_run_of_the_edit_takes_at_most_the_batch_size(setup):
    """--batch-size bounds every onnxruntime run of the edit (statistics, held-out check, readout, outputs), as
    its help says: the data are read through an array that records the largest read (predictions ran 256 images
    at a time whatever was asked)."""
    from onnx_damp.data.dataset import LazyArray
    from onnx_damp.options import RunOptions

    class Recorded(LazyArray):
        def __init__(self, x):
            super().__init__(len(x), x.shape[1:], x.dtype)
            self.x, self.largest = x, 0

        def _rows(self, idx):
            self.largest = max(self.largest, len(idx))
            return self.x[idx]

    model, _, calib, _ = setup
    x = Recorded(np.asarray(calib.x))
    out = damp_edit(model, scan_graph(model).editable, Dataset(x, calib.y, calib.source), [0],
                    list(range(1, CLASSES)), run=RunOptions(batch_size=16))
    assert out.heldout_score is not None and out.calib_outputs.shape[0] == len(calib.y)
    assert 0 < x.largest <= 16
