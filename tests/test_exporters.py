"""Real PyTorch exports (graph case 3) and models without usable shape information (graph case 9).

The fixtures in tests/fixtures are tiny models written by tests/fixtures/build_fixtures.py (needs torch;
these tests do not): a CNN (Conv-BN-ReLU, depthwise Conv, mean over H and W, Linear) and a one-block
transformer (patch Conv, class token, nn.TransformerEncoderLayer, Linear head), each from the TorchScript
(`dynamo=False`) and the dynamo exporter at every opset from 13 to 21 the exporter produced
(manifest.json says which and why not the others).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_damp

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DATA = FIXTURES / "tiny_data.npz"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
PRODUCED = [e["file"] for e in MANIFEST["fixtures"] if e["produced"]
            and e["opset"] <= onnx.defs.onnx_opset_version()]   # an older onnx cannot check newer opsets
FORGET = [1]

# Per model, every editable operator in graph order: (Conv or linear, input features, output features, groups).
EXPECTED = {
    "cnn": [("Conv", 1, 8, 1),            # conv (BatchNorm folded in)
            ("Conv", 8, 8, 8),            # depthwise conv
            ("linear", 8, 4, 1)],         # head
    "vit": [("Conv", 1, 16, 1),           # patch embedding
            ("linear", 16, 48, 1),        # attention in-projection (q, k, v)
            ("linear", 16, 16, 1),        # attention out-projection
            ("linear", 16, 32, 1),        # MLP linear1
            ("linear", 32, 16, 1),        # MLP linear2
            ("linear", 16, 4, 1)],        # head on the class token
}
# Module paths recorded by the dynamo exporter (opsets 18-21; the down-converted opset 17 file has none).
SCOPES = {"cnn": ["conv", "dw", "head"],
          "vit": ["patch_embed", "block.self_attn", "block.self_attn", "block.linear1", "block.linear2", "head"]}
ACT_X_ACT = "activation x activation"


def entry(file: str) -> dict:
    return next(e for e in MANIFEST["fixtures"] if e["file"] == file)


def load(file: str) -> onnx.ModelProto:
    return onnx.load(str(FIXTURES / file))


def data() -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA) as d:
        return d["x"], d["y"]


def run(model, x: np.ndarray) -> np.ndarray:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def out_features(op) -> int:
    if op.op_type == "Conv":
        return op.weight_shape[0]
    if op.op_type == "Gemm":
        return op.weight_shape[0] if op.trans_b else op.weight_shape[1]
    return op.weight_shape[1]


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def skeleton(model: onnx.ModelProto) -> bytes:
    """model without initializer values and without onnx_damp's metadata: what an edit must not change."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        bare = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
        t.CopyFrom(bare)
    keep = [(p.key, p.value) for p in m.metadata_props if not p.key.startswith("onnx_damp.")]
    del m.metadata_props[:]
    for k, v in keep:
        m.metadata_props.add(key=k, value=v)
    return m.SerializeToString(deterministic=True)


def check_only_weights_changed(original: onnx.ModelProto, edited: onnx.ModelProto, editable, res=None) -> set[str]:
    """The edit's contract: same graph, opset and IR version; only editable weights' values differ, and the
    readout stage's bias (res.readout.bias) when it ran."""
    onnx.checker.check_model(edited)
    sig = lambda m: [(n.op_type, n.domain, n.name, list(n.input), list(n.output)) for n in m.graph.node]  # noqa: E731
    assert sig(edited) == sig(original)
    assert [n.SerializeToString() for n in edited.graph.node] == [n.SerializeToString() for n in original.graph.node]
    assert [i.SerializeToString() for i in edited.graph.input] == [i.SerializeToString() for i in original.graph.input]
    assert [o.SerializeToString() for o in edited.graph.output] == [o.SerializeToString() for o in original.graph.output]
    assert [(i.domain, i.version) for i in edited.opset_import] == [(i.domain, i.version) for i in original.opset_import]
    assert edited.ir_version == original.ir_version
    assert skeleton(edited) == skeleton(original)   # value_info, functions, metadata, initializer names/types/shapes
    before, after = initializers(original), initializers(edited)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed, "nothing was edited"
    readout = {res.readout.bias} if res is not None and res.readout is not None and res.readout.applied else set()
    assert changed <= {op.weight_name for op in editable} | readout
    return changed


# ------------------------------------------------------------------------------------ the fixture matrix
def test_fixture_matrix_is_recorded_and_small():
    combos = {(e["model"], e["exporter"], e["opset"]) for e in MANIFEST["fixtures"]}
    assert combos == {(m, x, o) for m in EXPECTED for x in ("torchscript", "dynamo") for o in range(13, 22)}
    for e in MANIFEST["fixtures"]:
        assert e["produced"] == (FIXTURES / e["file"]).exists(), e
        assert not e["produced"] or e["bytes"] == (FIXTURES / e["file"]).stat().st_size, e
        assert e["produced"] or e["reason"], e
    # both exporters, both models, opsets below and from 18 (ReduceMean axes as attribute and as input)
    assert {(e["model"], e["exporter"]) for e in MANIFEST["fixtures"] if e["produced"]} == \
        {(m, x) for m in EXPECTED for x in ("torchscript", "dynamo")}
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1_000_000


def test_reduce_mean_axes_follow_the_opset():
    for file in (f for f in PRODUCED if f.startswith("cnn_")):
        model, opset = load(file), entry(file)["opset"]
        [node] = [n for n in model.graph.node if n.op_type == "ReduceMean"]
        has_attr = any(a.name == "axes" for a in node.attribute)
        assert has_attr == (opset < 18) and (len(node.input) == 2) == (opset >= 18), file


# ------------------------------------------------------------------------------------ inspect
@pytest.mark.parametrize("file", PRODUCED)
def test_inspect_lists_the_exported_operators(file):
    model, kind = load(file), entry(file)["model"]
    res = onnx_damp.inspect(FIXTURES / file)
    got = [("Conv" if op.op_type == "Conv" else "linear", op.feature_dim, out_features(op), op.groups)
           for op in res.editable]
    assert got == EXPECTED[kind]
    assert all(op.op_type in ("Gemm", "MatMul") for op in res.editable if op.op_type != "Conv")
    names = lambda t: {n.name for n in model.graph.node if n.op_type == t}  # noqa: E731
    editable = {op.node_name for op in res.editable}
    assert names("Conv") | names("Gemm") <= editable          # every Conv (depthwise too) and every Gemm
    skipped = {s.node_name: s for s in res.skipped}
    assert names("MatMul") == (names("MatMul") & editable) | set(skipped)
    if kind == "vit":   # the two activation x activation MatMuls of attention (Q K^T and P V)
        assert len(skipped) == 2
        assert all(s.op_type == "MatMul" and ACT_X_ACT in s.reason for s in skipped.values())
    else:
        assert not skipped
    assert res.opsets["ai.onnx"] == entry(file)["opset"]
    assert res.inputs[0]["shape"][1:] == [1, 8, 8] and not isinstance(res.inputs[0]["shape"][0], int)
    json.dumps(res.to_dict())


@pytest.mark.parametrize("file", [f for f in PRODUCED if entry(f)["exporter"] == "dynamo" and entry(f)["opset"] >= 18])
def test_inspect_shows_dynamo_module_scopes(file):
    kind = entry(file)["model"]
    scopes = [op.scope for op in onnx_damp.inspect(FIXTURES / file).editable]
    assert scopes == SCOPES[kind]  # the CNN's first Conv has its BatchNorm folded in at the top level


# ------------------------------------------------------------------------------------ forget
@pytest.mark.parametrize("file", PRODUCED)
def test_forget_keeps_the_exported_graph(file, tmp_path):
    x, y = data()
    original = load(file)
    editable = onnx_damp.inspect(original).editable
    out = tmp_path / "out.onnx"
    res = onnx_damp.forget(FIXTURES / file, DATA, forget=FORGET, output=out)
    assert res.written == [str(out)] and sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    report = res.to_dict()
    json.dumps(report)
    assert report["forget_classes"] == FORGET and report["retain_classes"] == [0, 2, 3]
    assert set(report["relative_change"]) == {op.node_name for op in editable}
    edited = onnx.load(str(out))
    changed = check_only_weights_changed(original, edited, editable, res)
    head = editable[-1].weight_name
    assert head in changed
    logits = run(out, x)
    assert logits.shape == (len(x), 4) and np.all(np.isfinite(logits))
    np.testing.assert_allclose(logits, run(res.model, x), rtol=1e-5, atol=1e-5)
    assert res.before.forget_accuracy == 1.0 and res.before.retain_accuracy == 1.0
    if entry(file)["model"] == "cnn":
        # the CNN's forget prototype has a large residual outside the retain span at every edited layer
        assert res.after.forget_accuracy <= 0.1 and res.after.retain_accuracy >= 0.9
        assert np.mean(logits[y == 1].argmax(1) == 1) == res.after.forget_accuracy


# ------------------------------------------------------------------------------------ case 9: no shapes
def strip_value_info(model: onnx.ModelProto, outputs_too: bool = False) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    if outputs_too:   # keep the element type and rank, forget every dimension (the checker needs a shape)
        for o in m.graph.output:
            for d in o.type.tensor_type.shape.dim:
                d.Clear()
    return m


def editable_summary(ops) -> list[tuple]:
    return [(o.node_name, o.op_type, o.weight_name, tuple(o.weight_shape), o.feature_dim, o.groups) for o in ops]


@pytest.mark.parametrize("outputs_too", [False, True], ids=["no_value_info", "no_value_info_unknown_output_dims"])
@pytest.mark.parametrize("file", ["cnn_dynamo_op18.onnx", "vit_dynamo_op18.onnx", "vit_dynamo_op17.onnx"])
def test_models_without_value_info(file, outputs_too, tmp_path):
    x, _ = data()
    original = load(file)
    assert len(original.graph.value_info) > 0
    model = strip_value_info(original, outputs_too)
    onnx.checker.check_model(model)
    path = tmp_path / "stripped.onnx"
    onnx.save_model(model, str(path))
    ops = onnx_damp.inspect(path).editable
    assert editable_summary(ops) == editable_summary(onnx_damp.inspect(original).editable)
    out = tmp_path / "out.onnx"
    res = onnx_damp.forget(path, DATA, forget=FORGET, output=out)
    edited = onnx.load(str(out))
    check_only_weights_changed(model, edited, ops, res)
    assert len(edited.graph.value_info) == 0
    assert run(out, x).shape == (len(x), 4)
    # the same edit as with value_info: shape information plays no part in it
    with_vi = onnx_damp.forget(original, DATA, forget=FORGET)
    a, b = initializers(res.model), initializers(with_vi.model)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_torchscript_fixtures_have_no_value_info():
    """The TorchScript exporter writes no value_info: the main matrix already covers that case."""
    for file in (f for f in PRODUCED if entry(f)["exporter"] == "torchscript"):
        assert len(load(file).graph.value_info) == 0, file


# ------------------------------------------------------------------------------------ case 9: strict inference fails
def computed_reshape_model(stale_rank: bool = True) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x [N, 2, 3] -> Reshape to Concat(Shape(x)[:1], [-1]) (a shape computed at run time) -> MatMul W1 [6, 8]
    -> Relu -> MatMul W2 [8, 3]. With stale_rank, the Reshape output carries a stale rank-1 value_info (as
    left behind by a graph edit): strict shape inference fails at the Reshape and again at the MatMul,
    onnxruntime merges it leniently and runs."""
    rng = np.random.default_rng(3)
    means = np.zeros((3, 6), np.float32)
    for c in range(3):
        means[c, 2 * c:2 * c + 2] = 1.0
    y = np.repeat(np.arange(3, dtype=np.int64), 15)
    x = (means[y] + 0.2 * rng.normal(size=(len(y), 6))).astype(np.float32).reshape(-1, 2, 3)
    w1 = np.concatenate([np.eye(6), np.zeros((6, 2))], axis=1).astype(np.float32)
    w1 += 0.05 * rng.normal(size=w1.shape).astype(np.float32)
    w2 = np.concatenate([means.T, 0.1 * rng.normal(size=(2, 3))], axis=0).astype(np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Slice", ["s", "zero", "one"], ["n"], name="batch"),
             helper.make_node("Concat", ["n", "minus_one"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"], name="reshape"),
             helper.make_node("MatMul", ["r", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="fc2")]
    inits = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64),
             "minus_one": np.array([-1], np.int64), "w1": w1, "w2": w2}
    vis = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [5])] if stale_rank else []
    graph = helper.make_graph(nodes, "computed_reshape",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()], value_info=vis)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, x, y


def test_computed_reshape_alone_passes_strict_inference():
    """Documents why the stale value_info is needed: a run-time Reshape target only leaves dims unknown."""
    model, _, _ = computed_reshape_model(stale_rank=False)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)


def test_model_failing_strict_shape_inference(tmp_path):
    model, x, y = computed_reshape_model()
    onnx.checker.check_model(model)
    with pytest.raises(onnx.shape_inference.InferenceError, match="Reshape"):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert run(model, x).shape == (len(x), 3)           # onnxruntime runs it
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    ops = onnx_damp.inspect(path).editable
    assert [(o.node_name, o.feature_dim, out_features(o)) for o in ops] == [("fc1", 6, 8), ("fc2", 8, 3)]
    out = tmp_path / "out.onnx"
    res = onnx_damp.forget(path, (x, y), forget=FORGET, output=out)
    edited = onnx.load(str(out))
    check_only_weights_changed(model, edited, ops, res)
    with pytest.raises(onnx.shape_inference.InferenceError):   # still the same (unchanged) value_info
        onnx.shape_inference.infer_shapes(edited, strict_mode=True)
    assert res.before.forget_accuracy == 1.0
    assert res.after.forget_accuracy <= 0.1 and res.after.retain_accuracy >= 0.9
    assert run(out, x).shape == (len(x), 3)


def test_exported_transformer_failing_strict_shape_inference(tmp_path):
    """A real export whose value_info for the tensor the attention in-projection reads has gone stale."""
    x, _ = data()
    model = load("vit_dynamo_op18.onnx")
    onnx.shape_inference.infer_shapes(model, strict_mode=True)   # the export itself is consistent
    ops = onnx_damp.inspect(model).editable
    in_proj = ops[1].input_name
    [vi] = [v for v in model.graph.value_info if v.name == in_proj]
    vi.type.tensor_type.shape.ClearField("dim")
    vi.type.tensor_type.shape.dim.add().dim_value = 7      # rank 1 where the tensor is 3-D
    onnx.checker.check_model(model)
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert run(model, x).shape == (len(x), 4)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    assert editable_summary(onnx_damp.inspect(path).editable) == editable_summary(ops)
    out = tmp_path / "out.onnx"
    res = onnx_damp.forget(path, DATA, forget=FORGET, output=out)
    check_only_weights_changed(model, onnx.load(str(out)), ops, res)
    assert run(out, x).shape == (len(x), 4)
