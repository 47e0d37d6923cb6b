"""Token layouts of transformer-style inputs: found by probing, and class-token statistics match numpy."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.stats.collector import collect
from onnx_damp.runtime.tokens import probe_token_layouts

from tiny_models import make_model

T, D, OUT = 5, 4, 3


def token_model(layout: str, rng):
    """x [N, T, D] laid out as the named layout before a constant-weight MatMul (3-D) or Gemm (2-D rows)."""
    w = rng.normal(size=(D, OUT)).astype(np.float32)
    inits = {"w": w}
    if layout == "batch_first":          # [N, T, D] MatMul
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
        out_shape = ["N", T, OUT]
    elif layout == "tokens_first":       # [T, N, D] MatMul
        nodes = [helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[1, 0, 2]),
                 helper.make_node("MatMul", ["t", "w"], ["y"], name="mm")]
        out_shape = [T, "N", OUT]
    else:                                # 2-D rows, token-major ([T*N, D]) or batch-major ([N*T, D]) Gemm
        inits["shape"] = np.array([-1, D], dtype=np.int64)
        src = "x"
        nodes = []
        if layout == "token_major":
            nodes.append(helper.make_node("Transpose", ["x"], ["t"], name="tr", perm=[1, 0, 2]))
            src = "t"
        nodes += [helper.make_node("Reshape", [src, "shape"], ["rows"], name="rs"),
                  helper.make_node("Gemm", ["rows", "w"], ["y"], name="mm")]
        out_shape = [None, OUT]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, D])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)


@pytest.mark.parametrize("layout,kind", [("batch_first", "axis"), ("tokens_first", "axis"),
                                         ("token_major", "token_major"), ("batch_major", "batch_major")])
def test_probe_finds_the_token_layout(layout, kind):
    rng = np.random.default_rng(0)
    model = token_model(layout, rng)
    ops = scan_graph(model).editable
    found = probe_token_layouts(model, ops, rng.normal(size=(6, T, D)).astype(np.float32), None)
    lay = found["mm"]
    assert lay.kind == kind and lay.tokens == T
    if kind == "axis":
        assert lay.axis == (1 if layout == "batch_first" else 0)


@pytest.mark.parametrize("layout", ["batch_first", "tokens_first", "token_major", "batch_major"])
def test_auto_mode_collects_class_token_statistics(layout):
    rng = np.random.default_rng(1)
    model = token_model(layout, rng)
    ops = scan_graph(model).editable
    x = rng.normal(size=(14, T, D)).astype(np.float32)
    y = np.array([0] * 7 + [1] * 7)
    st = collect(model, ops, Dataset(x, y), gram_classes=[0], batch_size=4, feature_mode="auto")
    ls = st.layers["mm"]
    cls0 = x[y == 0][:, 0, :].astype(np.float64)
    assert ls.rows[0] == 7
    np.testing.assert_allclose(ls.mean(0), cls0.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ls.grams[0], cls0.T @ cls0, rtol=1e-5, atol=1e-6 * np.abs(cls0.T @ cls0).max())
    # position mode keeps every token row
    sp = collect(model, ops, Dataset(x, y), gram_classes=[0], batch_size=4, feature_mode="position")
    assert sp.layers["mm"].rows[0] == 7 * T
    np.testing.assert_allclose(sp.layers["mm"].mean(0), x[y == 0].reshape(-1, D).mean(0), rtol=1e-5, atol=1e-6)


def test_plain_rows_and_fixed_batch_get_no_token_layout():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(D, OUT)).astype(np.float32)
    for batch in ("N", 2):
        model = make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="mm")],
                           [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, D])],
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, OUT])], {"w": w})
        ops = scan_graph(model).editable
        assert probe_token_layouts(model, ops, rng.normal(size=(4, D)).astype(np.float32), None) == {}


@pytest.mark.parametrize("layout", ["batch_first", "tokens_first", "token_major", "batch_major"])
def test_verification_features_read_the_class_token(layout):
    """features.py: a token-sequence input gives its token 0 per sample (a plain input its row mean)."""
    from onnx_damp.verify.feature_runs import feature_model
    from onnx_damp.runtime.session import make_session

    rng = np.random.default_rng(3)
    model = token_model(layout, rng)
    ops = scan_graph(model).editable
    x = rng.normal(size=(6, T, D)).astype(np.float32)
    for layouts, want in [(probe_token_layouts(model, ops, x, None), x[:, 0, :]), ({}, x.mean(axis=1))]:
        inst, names = feature_model(model, ops, frozenset(layouts))
        sess = make_session(inst, "cpu", optimization="basic")
        got = np.stack([sess.run([names[0]], {"x": x[i:i + 1]})[0] for i in range(6)])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def fixed(model, n: int):
    """The model with its input's (and outputs') batch dimension fixed at n."""
    for vi in list(model.graph.input) + list(model.graph.output):
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param == "N":
                dim.Clear()
                dim.dim_value = n
    return model


@pytest.mark.parametrize("layout,kind", [("batch_first", "axis"), ("tokens_first", "axis"),
                                         ("token_major", "batch_major"), ("batch_major", "batch_major")])
def test_a_batch_fixed_at_1_is_probed_with_one_image(layout, kind):
    """Issue 15: a fixed-batch transformer gets its token layout (one image's rows are its tokens)."""
    from onnx_damp.runtime.tokens import token_probe_note

    rng = np.random.default_rng(4)
    model = fixed(token_model(layout, rng), 1)
    ops = scan_graph(model).editable
    lay = probe_token_layouts(model, ops, rng.normal(size=(6, T, D)).astype(np.float32), None)["mm"]
    assert lay.kind == kind and lay.tokens == T
    if kind == "axis":
        assert lay.axis == (1 if layout == "batch_first" else 0)
    assert token_probe_note(model, ops, None, "auto") is None


def test_a_batch_fixed_at_another_size_warns_that_tokens_are_read_as_rows(tmp_path):
    import onnx

    import onnx_damp

    rng = np.random.default_rng(5)
    w = rng.normal(size=(D, OUT)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                        helper.make_node("ReduceMean", ["h"], ["y"], name="pool", axes=[1], keepdims=0)],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, T, D])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, OUT])], {"w": w})
    ops = scan_graph(model).editable
    x = rng.normal(size=(40, T, D)).astype(np.float32)
    assert probe_token_layouts(model, ops, x, None) == {}
    from onnx_damp.runtime.tokens import token_probe_note

    note = token_probe_note(model, ops, None, "auto")
    assert note and "fixed at 2" in note and "mm" in note
    assert token_probe_note(model, ops, None, "position") is None      # rows were asked for
    onnx.save(model, str(tmp_path / "m.onnx"))
    res = onnx_damp.forget(str(tmp_path / "m.onnx"), (x, np.repeat(np.arange(OUT), 14)[:40]), [0], feature_samples=0,
                           default_gates=False, holdout=0, readout=False)
    assert any("cannot be probed" in w for w in res.warnings)


def test_rows_shape_inference_shows_to_be_one_per_sample_are_not_probed():
    """A Gemm reading [N, d] (the data's own batch) needs no probe; flattened token rows ([N*T, d]) do."""
    from onnx_damp.runtime.tokens import batch_rows

    rng = np.random.default_rng(5)
    w = rng.normal(size=(D, OUT)).astype(np.float32)
    plain = lambda: make_model([helper.make_node("Gemm", ["x", "w"], ["y"], name="mm")],  # noqa: E731
                               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", D])],
                               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", OUT])], {"w": w})
    assert batch_rows(plain(), ["x"]) == {"x"}
    assert batch_rows(fixed(plain(), 1), ["x"]) == {"x"}
    assert batch_rows(fixed(plain(), 2), ["x"]) == set()        # a batch fixed at 2: not claimed
    for layout in ("token_major", "batch_major"):
        assert batch_rows(token_model(layout, rng), ["rows"]) == set()
        assert batch_rows(fixed(token_model(layout, rng), 1), ["rows"]) == set()


def test_probe_runs_shape_inference_once_for_all_candidates(monkeypatch):
    """The ViT sample has a dozen token-candidate inputs: one shape inference decides which are [batch, d]
    (it ran once per candidate, 0.1 s of a 1.3 s forget)."""
    from pathlib import Path

    import onnx

    from onnx_damp.runtime import shapes
    root = Path(__file__).resolve().parent.parent / "samples" / "vit_mnist"
    model = onnx.load(str(root / "model.onnx"))
    with np.load(root / "calib.npz", allow_pickle=False) as z:
        x = z["x"][:3]
    calls = []
    real = shapes.inferred_dims
    monkeypatch.setattr(shapes, "inferred_dims", lambda m: calls.append(1) or real(m))
    layouts = probe_token_layouts(model, scan_graph(model).editable, x, None)
    assert layouts and len(calls) == 1
