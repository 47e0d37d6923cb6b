"""Models whose batch is fixed at 1 run at full batch size in the tool's own sessions, when that holds."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnx_damp
from onnx_damp.runtime.batching import batch_free_model, fixed_batch_of, free_batch
from onnx_damp.runtime.predict import predict
from onnx_damp.runtime.session import make_session
from onnx_damp.data.dataset import Dataset
from tiny_models import make_model


def fixed_cnn(rng, mixing=False):
    """Conv -> Reshape [1, -1] (flatten with the batch fixed at 1) -> Gemm; mixing: Reshape [1, 1, -1] then a
    ReduceMean over axis 0 of a [-1, d] view of the whole batch, which a symbolic batch changes."""
    w = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    fc = rng.normal(size=(3, 4 * 6 * 6)).astype(np.float32)
    inits = {"w": w, "fc": fc, "fb": np.zeros(3, np.float32), "flat": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["c", "flat"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y0"], transB=1)]
    if mixing:  # subtract the batch mean: rows of a batch are no longer independent
        inits["axes"] = np.array([0], np.int64)
        nodes += [helper.make_node("ReduceMean", ["y0", "axes"], ["m"], keepdims=1),
                  helper.make_node("Sub", ["y0", "m"], ["y1"]),
                  helper.make_node("Add", ["y1", "y0"], ["y"])]
    else:
        nodes[-1].output[0] = "y"
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits, opset=18)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_fixed_batch_model_gets_a_symbolic_batch_with_the_same_outputs(rng):
    model = fixed_cnn(rng)
    x = rng.normal(size=(7, 1, 6, 6)).astype(np.float32)
    free, why = batch_free_model(model, x)
    assert fixed_batch_of(model) == 1 and free is not None and why == ""
    assert fixed_batch_of(free) is None
    one_by_one = predict(model, Dataset(x, np.zeros(7, np.int64)), session=make_session(model))
    np.testing.assert_allclose(predict(model, Dataset(x, np.zeros(7, np.int64))), one_by_one, rtol=1e-5, atol=1e-6)


def test_a_graph_that_mixes_batch_rows_keeps_its_fixed_batch(rng):
    model = fixed_cnn(rng, mixing=True)
    x = rng.normal(size=(5, 1, 6, 6)).astype(np.float32)
    free, why = batch_free_model(model, x)
    assert free is None and "changes the outputs" in why
    # predictions are then the one-at-a-time ones
    one_by_one = predict(model, Dataset(x, np.zeros(5, np.int64)), session=make_session(model))
    np.testing.assert_allclose(predict(model, Dataset(x, np.zeros(5, np.int64))), one_by_one, rtol=1e-6)
    # the rewrite itself would run, and give other numbers: the check is what refuses it
    assert make_session(free_batch(model)) is not None


def test_the_edited_model_keeps_the_original_fixed_batch(rng, tmp_path):
    model = fixed_cnn(rng)
    x = rng.normal(size=(120, 1, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 40)
    x += y[:, None, None, None] * 0.5  # classes the model can tell apart a little
    res = onnx_damp.forget(model, (x, y), [0], tmp_path / "e.onnx", feature_samples=0)
    edited = onnx.load(str(tmp_path / "e.onnx"))
    assert fixed_batch_of(edited) == 1
    assert [n.SerializeToString() for n in edited.graph.node] == [n.SerializeToString() for n in model.graph.node]
    flat = next(t for t in edited.graph.initializer if t.name == "flat")
    assert onnx.numpy_helper.to_array(flat).tolist() == [1, -1]
    assert res.written


def test_forget_says_when_a_fixed_batch_stays_fixed(rng):
    model = fixed_cnn(rng, mixing=True)
    x = rng.normal(size=(60, 1, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    res = onnx_damp.forget(model, (x, y), [0], feature_samples=0)
    assert any("fixed at 1" in n and "one image at a time" in n for n in res.notes)


def test_a_symbolic_batch_that_does_not_run_is_refused_without_onnxruntime_error_lines(rng, capfd):
    """Concat with a constant of batch 1 (as a ViT's class token is exported at batch 1) fails at run time
    with a symbolic batch: the answer is the verdict, and onnxruntime logs nothing to stderr."""
    inits = {"tok": rng.normal(size=(1, 2)).astype(np.float32), "fc": rng.normal(size=(3, 6)).astype(np.float32)}
    nodes = [helper.make_node("Concat", ["x", "tok"], ["c"], axis=1),
             helper.make_node("Gemm", ["c", "fc"], ["y"], transB=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits, opset=18)
    capfd.readouterr()
    free, why = batch_free_model(model, rng.normal(size=(5, 4)).astype(np.float32))
    assert free is None and "does not run" in why
    assert "onnxruntime" not in capfd.readouterr().err


def test_make_session_refuses_an_unknown_optimisation_level():
    """make_session's optimization is one of OPTIMIZATIONS; anything else is a ValueError naming them."""
    with pytest.raises(ValueError, match="unknown graph optimisation 'fast'.*all, basic, none"):
        make_session(onnx.ModelProto(), "cpu", optimization="fast")
