"""Feature mode "patch": Conv inputs as unfolded kernel patches, statistics and edit in [in * k...] space."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnx_damp.method import plan as dm
from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime.instrument import instrument, restore_shift
from onnx_damp.stats.collector import collect
from tiny_models import conv_model, make_model


def im2col(x, k, pads, strides, dilations):
    """Reference unfold: rows of patches in (channel, kh, kw) order, one per output position."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    ho = (xp.shape[2] - dilations[0] * (k[0] - 1) - 1) // strides[0] + 1
    wo = (xp.shape[3] - dilations[1] * (k[1] - 1) - 1) // strides[1] + 1
    rows = []
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                r, s = i * strides[0], j * strides[1]
                patch = xp[b, :, r:r + dilations[0] * (k[0] - 1) + 1:dilations[0],
                           s:s + dilations[1] * (k[1] - 1) + 1:dilations[1]]
                rows.append(patch.reshape(-1))
    return np.array(rows, dtype=np.float64)


@pytest.mark.parametrize("pads,strides,dilations", [([1, 1, 1, 1], [1, 1], [1, 1]), ([1, 0, 0, 1], [2, 1], [1, 2])])
def test_unfolded_statistics_equal_numpy_im2col(pads, strides, dilations):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(4, 3, 3, 2)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=pads, strides=strides, dilations=dilations)
    model = make_model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 7, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, None, None])], {"w": w})
    ops = scan_graph(model).editable
    inst, taps = instrument(model, ops, "patch")
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    t = taps["conv"]
    sess = ort.InferenceSession(inst.SerializeToString(), providers=["CPUExecutionProvider"])
    s, gram, count, shift = sess.run([t.sum_name, t.gram_name, t.shape_name, t.shift_name], {"x": x})
    s, gram = restore_shift(s, gram, int(count[0]), shift)  # float32 reductions are taken around the batch mean
    rows = im2col(x.astype(np.float64), (3, 2), pads, strides, dilations)
    assert t.feature_dim == 18 and tuple(count) == rows.shape
    np.testing.assert_allclose(s, rows.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gram, rows.T @ rows, rtol=1e-5, atol=1e-4)


def test_patch_edit_acts_on_the_flattened_weight():
    rng = np.random.default_rng(5)
    model, p = conv_model(rng, cin=2, cout=3, k=3)
    ops = scan_graph(model).editable
    x = rng.normal(size=(60, 2, 6, 6)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    x[y == 1] += 1.5  # class 1 differs in mean
    stats = collect(model, ops, Dataset(x, y), [1], batch_size=16, feature_mode="patch")
    assert stats.layers["conv"].feature_dim == 18 and stats.layers["head"].feature_dim == 3
    plans = dm.plan(ops, stats, [1], [0, 2])
    conv_plan = next(pl for pl in plans if pl.op.node_name == "conv")
    assert conv_plan.q.shape[0] == 18
    edited = dm.edit_weight(conv_plan.op, p["w"].astype(np.float64), conv_plan.q, 0.7)
    q = conv_plan.q
    want = p["w"].reshape(3, -1) @ (np.eye(18) - 0.7 * q @ q.T)
    np.testing.assert_allclose(edited.reshape(3, -1), want, rtol=1e-12, atol=1e-12)
