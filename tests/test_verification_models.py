"""Feature extraction and model-level verification metrics on tiny models built with onnx.helper."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp
from onnx_damp.data.dataset import Dataset
from onnx_damp.errors import DampError
from onnx_damp.verify.feature_runs import extract, pick_samples
from onnx_damp.ops.graph import scan_graph
from tiny_models import conv_model, make_model, matmul_model

CLASSES = 3


def mlp(rng, head="gemm", softmax=False, batch="N"):
    """x [batch, 4] -> linear 6 -> Relu -> linear 3 (-> Softmax): Gemm(transB=1) or MatMul + Add layers."""
    w1, b1 = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    w2, b2 = rng.normal(size=(CLASSES, 6)).astype(np.float32), rng.normal(size=CLASSES).astype(np.float32)
    out = "z" if softmax else "y"
    if head == "gemm":
        nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], name="fc1", transB=1),
                 helper.make_node("Relu", ["a"], ["r"], name="relu"),
                 helper.make_node("Gemm", ["r", "w2", "b2"], [out], name="fc2", transB=1)]
        inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    else:
        nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
                 helper.make_node("Add", ["m1", "b1"], ["a"], name="add1"),
                 helper.make_node("Relu", ["a"], ["r"], name="relu"),
                 helper.make_node("MatMul", ["r", "w2"], ["m2"], name="mm2"),
                 helper.make_node("Add", ["m2", "b2"], [out], name="add2")]
        inits = {"w1": w1.T.copy(), "b1": b1, "w2": w2.T.copy(), "b2": b2}
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=-1))
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, CLASSES])], inits)


def edited(model, name, fn):
    """A copy of model with initializer name replaced by fn(value)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(t).copy()).astype(np.float32), name))
    return out


def data(rng, n=90):
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % CLASSES


def minus_at(k, c):
    def fn(v):
        v[k] -= c
        return v
    return fn


# ------------------------------------------------------------------------------------------ features
def test_pooled_features_are_per_sample_means_over_positions_and_tokens():
    rng = np.random.default_rng(0)
    model, _ = conv_model(rng)
    x = rng.normal(size=(5, 3, 6, 6)).astype(np.float32)
    ds = Dataset(x, np.zeros(5, dtype=np.int64))
    ops = scan_graph(model).editable
    pf = extract(model, ops, ds, np.array([4, 1]))
    assert np.allclose(pf.layers[0], x[[4, 1]].mean(axis=(2, 3)), atol=1e-6)      # Conv input: channel means
    assert pf.layers[1].shape == (2, 4) and pf.logits.shape == (2, 3)
    mm, _ = matmul_model(rng, d=5, out=3, tokens=4)
    xt = rng.normal(size=(3, 4, 5)).astype(np.float32)
    with pytest.raises(DampError, match="expected \\[batch, classes\\]"):   # a [N, tokens, out] output
        extract(mm, scan_graph(mm).editable, Dataset(xt, np.zeros(3, dtype=np.int64)), np.arange(3))


def test_fixed_batch_models_get_copies_of_one_sample():
    rng = np.random.default_rng(1)
    model = mlp(rng, batch=2)
    x, y = data(rng, 6)
    pf = extract(model, scan_graph(model).editable, Dataset(x, y), np.arange(6))
    assert np.allclose(pf.layers[0], x, atol=1e-6)
    free = mlp(np.random.default_rng(1))
    assert np.allclose(extract(free, scan_graph(free).editable, Dataset(x, y), np.arange(6)).logits, pf.logits,
                       atol=1e-5)


def test_pick_samples_is_balanced_deterministic_and_capped():
    y = np.array([0] * 10 + [1] * 3 + [2] * 50)
    idx = pick_samples(y, [0, 1, 2], 20)
    assert len(idx) == 20 and np.all(np.diff(idx) > 0)
    counts = np.bincount(y[idx], minlength=3)
    assert counts[1] == 3 and abs(int(counts[0]) - int(counts[2])) <= 1   # the small class's leftover goes to others
    assert np.array_equal(idx, pick_samples(y, [0, 1, 2], 20))
    assert len(pick_samples(y, [1], 500)) == 3 and len(pick_samples(y, [0], 0)) == 0


# ---------------------------------------------------------------------------------------- bias shift
@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_head_bias_edit_has_bias_share_one(head):
    rng = np.random.default_rng(2)
    base = mlp(rng, head)
    x, y = data(rng)
    ev = onnx_damp.evaluate(edited(base, "b2", minus_at(1, 6.0)), (x, y), [1], original=base)
    b = ev.verification.bias_shift
    assert b.available and b.bias_share == pytest.approx(1.0, abs=1e-5)
    assert b.delta_logit == pytest.approx(-6.0, abs=1e-4) and b.features == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_weight_only_edits_have_bias_share_zero(head):
    rng = np.random.default_rng(3)
    base = mlp(rng, head)
    x, y = data(rng)
    upstream = onnx_damp.evaluate(edited(base, "w1", lambda w: 0.5 * w), (x, y), [1], original=base)
    b = upstream.verification.bias_shift
    assert b.available and b.bias_share == pytest.approx(0.0, abs=1e-5)
    assert b.features == pytest.approx(b.delta_logit, rel=1e-4) and b.head_weight == pytest.approx(0.0, abs=1e-5)
    head_edit = onnx_damp.evaluate(edited(base, "w2", lambda w: 1.5 * w), (x, y), [1], original=base)
    b = head_edit.verification.bias_shift
    assert b.bias_share == pytest.approx(0.0, abs=1e-5) and b.head_weight == pytest.approx(b.delta_logit, rel=1e-4)


def test_bias_shift_is_na_when_the_output_is_not_affine_in_the_last_operator():
    rng = np.random.default_rng(4)
    base = mlp(rng, softmax=True)
    x, y = data(rng)
    b = onnx_damp.evaluate(edited(base, "b2", minus_at(1, 6.0)), (x, y), [1], original=base).verification.bias_shift
    assert not b.available and "not W h + b" in b.reason
    d = onnx_damp.evaluate(base, (x, y), [1], original=base).to_dict()
    assert d["verification"]["bias_shift"]["available"] is False


# ------------------------------------------------------------------------------- CKA and separability
def test_reference_equal_to_the_model_gives_cka_one_and_identical_original_ratio_one():
    rng = np.random.default_rng(5)
    base = mlp(rng)
    x, y = data(rng)
    v = onnx_damp.evaluate(base, (x, y), [0], original=base, reference=base).verification
    assert v.matching == {"original": "index", "reference": "index"}
    assert all(lv.cka_model == pytest.approx(1.0) and lv.cka_original == pytest.approx(1.0) for lv in v.layers)
    assert v.cka_gain == pytest.approx(0.0) and v.cka_gain_layers == [1]
    assert all(lv.distance_ratio == pytest.approx(1.0) and lv.separability_ratio == pytest.approx(1.0)
               for lv in v.layers)
    assert v.forget_samples == 30 and v.retain_samples == 60


def test_layers_are_matched_by_depth_when_counts_differ():
    rng = np.random.default_rng(6)
    base = mlp(rng)
    x, y = data(rng)
    one_layer = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="only", transB=1)],
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])],
                           {"w": rng.normal(size=(CLASSES, 4)).astype(np.float32),
                            "b": np.zeros(CLASSES, np.float32)})
    v = onnx_damp.evaluate(base, (x, y), [0], reference=one_layer).verification
    assert v.matching == {"reference": "depth"} and any("relative depth" in n for n in v.notes)
    assert [lv.reference_node for lv in v.layers] == ["only", "only"]
    assert v.layers[0].cka_model == pytest.approx(1.0)     # both read the input x
    assert v.cka_gain is None                               # no original: no gain


def test_mia_and_selectivity_through_the_api():
    rng = np.random.default_rng(7)
    base = mlp(rng)
    x, y = data(rng)
    xt, yt = data(rng, 60)
    suppressed = edited(base, "b2", minus_at(1, 50.0))
    ev = onnx_damp.evaluate(suppressed, (xt, yt), [1], original=base, train_data=(x, y))
    v = ev.verification
    assert set(v.mia) == {"model", "original"} and set(v.mia["model"]) == {"entropy", "confidence"}
    assert v.mia["model"]["confidence"].member_rate == 0.0 and v.mia_member_rate == 0.0
    assert v.mia["model"]["confidence"].targets == 30 and v.mia["model"]["confidence"].members == 60
    assert v.selectivity["forget_drop"] == pytest.approx(ev.original.forget_accuracy)
    d = ev.to_dict()["verification"]
    assert d["mia"]["available"] and d["mia"]["gate_member_rate"] == 0.0
    no_train = onnx_damp.evaluate(suppressed, (xt, yt), [1]).to_dict()["verification"]["mia"]
    assert no_train["available"] is False and "--train-data" in no_train["reason"]


def test_gates_through_the_api_and_as_a_helper():
    rng = np.random.default_rng(8)
    base = mlp(rng)
    x, y = data(rng)
    ev = onnx_damp.evaluate(base, (x, y), [1], original=base, gates={"max_forget_acc": 0.0})
    assert not ev.passed and ev.gates[0].metric == "forget_accuracy"
    assert ev.check_gates(onnx_damp.Gates(max_retain_drop=0.0))[0].passed          # no drop against itself
    assert ev.to_dict()["gates"]["passed"] is False
    with pytest.raises(DampError, match="--min-cka-gain needs --reference"):
        onnx_damp.evaluate(base, (x, y), [1], original=base, gates={"min_cka_gain": 0.0})
    with pytest.raises(DampError, match="unknown gate"):
        onnx_damp.evaluate(base, (x, y), [1], gates={"max_forget": 0.0})
