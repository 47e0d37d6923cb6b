"""Conv inputs read on a grid of every g-th position along each axis of each image
(runtime/instrument.grid_stride, grid_positions)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime.instrument import MIN_ROWS_PER_IMAGE, grid_stride, instrument, spatial_sizes
from onnx_damp.stats.collector import collect
from tiny_models import make_model

F32 = TensorProto.FLOAT


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def conv(rng, size=(20, 20), cin=3, cout=4, dtype=np.float32):
    w = rng.normal(size=(cout, cin, 3, 3)).astype(dtype)
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1][:2 * len(size)])]
    w = w[..., 0] if len(size) == 1 else w
    return make_model(nodes, [helper.make_tensor_value_info("x", t, ["N", cin, *size])],
                      [helper.make_tensor_value_info("y", t, ["N", cout, *size])], {"w": w})


@pytest.mark.parametrize("spatial, step", [((28, 28), 3), ((20, 20), 3), ((12, 12), 2), ((11, 11), 2),
                                           ((9, 9), 1), ((7, 7), 1), ((5, 5), 1), ((100,), 3), ((64,), 2),
                                           ((40,), 1), ((8, 8, 8), 2)])
def test_the_widest_grid_that_keeps_enough_positions(spatial, step):
    assert grid_stride(spatial) == step
    if step > 1:
        assert np.prod([len(range(0, v, step)) for v in spatial]) >= MIN_ROWS_PER_IMAGE


def test_spatial_sizes_from_shape_inference_and_none_when_dynamic(rng):
    model = conv(rng)
    assert spatial_sizes(model, scan_graph(model).editable) == {"conv": (20, 20), "conv|out": (20, 20)}
    dynamic = conv(rng, size=("H", "W"))
    assert spatial_sizes(dynamic, scan_graph(dynamic).editable) == {}


@pytest.mark.parametrize("size", [(20, 20), (100,)])
def test_statistics_read_the_grid_whatever_the_batch(rng, size):
    model = conv(rng, size=size)
    (op,) = scan_graph(model).editable
    x = rng.normal(size=(10, 3, *size)).astype(np.float32) + 2.0
    y = np.array([0, 1] * 5)
    kept = x[(slice(None), slice(None)) + (slice(None, None, 3),) * len(size)]   # every 3rd position on each axis
    rows = np.moveaxis(kept, 1, -1).reshape(10, -1, 3).astype(np.float64)
    assert rows.shape[1] == (49 if size == (20, 20) else 34)
    for batch in (1, 3, 128):
        st = collect(model, [op], Dataset(x, y), gram_classes=[0], batch_size=batch).layers["conv"]
        r0 = rows[y == 0].reshape(-1, 3)
        assert st.rows[0] == len(r0)
        np.testing.assert_allclose(st.sums[0], r0.sum(0), rtol=1e-5)
        np.testing.assert_allclose(st.grams[0], r0.T @ r0, rtol=1e-4)


def test_every_position_when_asked_or_when_sizes_are_unknown(rng):
    for model, strided in ((conv(rng), False), (conv(rng, size=("H", "W")), True)):
        inst, _ = instrument(model, scan_graph(model).editable, strided=strided)
        assert not any(n.op_type == "MaxPool" for n in inst.graph.node)
    inst, _ = instrument(conv(rng), scan_graph(conv(rng)).editable)
    assert [n.op_type for n in inst.graph.node].count("MaxPool") == 1


def test_a_float16_conv_reads_the_grid_and_reduces_it_in_float32(rng):
    model = conv(rng, dtype=np.float16)
    (op,) = scan_graph(model).editable
    x = rng.normal(size=(4, 3, 20, 20)).astype(np.float16)
    st = collect(model, [op], Dataset(x, np.zeros(4, dtype=np.int64)), gram_classes=[0]).layers["conv"]
    rows = np.moveaxis(x[:, :, ::3, ::3], 1, -1).reshape(-1, 3).astype(np.float64)
    assert st.rows[0] == len(rows)
    for got, want in ((st.sums[0], rows.sum(0)), (st.grams[0], rows.T @ rows)):  # float32 reductions
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    inst, _ = instrument(model, [op])
    (pool,) = [n for n in inst.graph.node if n.op_type == "MaxPool"]
    assert list(pool.input) == ["x"]                 # the float16 activation itself: only kept positions are cast
    (cast,) = [n for n in inst.graph.node if n.op_type == "Cast" and n.output[0].endswith("rows32")]
    assert helper.get_attribute_value(cast.attribute[0]) == TensorProto.FLOAT


def test_patch_mode_reads_the_grid_of_output_positions(rng):
    model = conv(rng, size=(28, 28))
    (op,) = scan_graph(model).editable
    x = rng.normal(size=(4, 3, 28, 28)).astype(np.float32)
    st = collect(model, [op], Dataset(x, np.zeros(4, dtype=np.int64)), gram_classes=[0],
                 feature_mode="patch").layers["conv"]
    assert st.rows[0] == 4 * 10 * 10 and st.sums[0].shape == (27,)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    patches = np.stack([padded[:, :, i:i + 3, j:j + 3].reshape(4, 27) for i in range(0, 28, 3)
                        for j in range(0, 28, 3)], axis=1).reshape(-1, 27)
    np.testing.assert_allclose(st.sums[0], patches.astype(np.float64).sum(0), rtol=1e-4, atol=1e-3)
