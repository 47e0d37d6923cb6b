"""Conv inputs read on a lattice of every s-th position of each image (runtime/instrument.position_rows)."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx_damp.data.dataset import Dataset
from onnx_damp.ops.graph import scan_graph
from onnx_damp.runtime.instrument import instrument, position_stride, spatial_sizes
from onnx_damp.stats.collector import collect
from tiny_models import make_model

F32 = TensorProto.FLOAT


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def conv(rng, size=(20, 20), cin=3, cout=4):
    w = rng.normal(size=(cout, cin, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return make_model(nodes, [helper.make_tensor_value_info("x", F32, ["N", cin, *size])],
                      [helper.make_tensor_value_info("y", F32, ["N", cout, *size])], {"w": w})


@pytest.mark.parametrize("spatial, step", [((28, 28), 5), ((20, 20), 7), ((35, 35), 11), ((7, 7), 1),
                                           ((9, 9), 5), ((100,), 1), ((120,), 7), ((64,), 1)])
def test_stride_is_coprime_with_the_width_and_keeps_enough_positions(spatial, step):
    assert position_stride(spatial) == step


def test_spatial_sizes_from_shape_inference_and_none_when_dynamic(rng):
    model = conv(rng)
    assert spatial_sizes(model, scan_graph(model).editable) == {"conv": (20, 20), "conv|out": (20, 20)}
    dynamic = conv(rng, size=("H", "W"))
    assert spatial_sizes(dynamic, scan_graph(dynamic).editable) == {}


def test_statistics_read_the_lattice_whatever_the_batch(rng):
    model = conv(rng)
    (op,) = scan_graph(model).editable
    x = rng.normal(size=(10, 3, 20, 20)).astype(np.float32) + 2.0
    y = np.array([0, 1] * 5)
    rows = x.transpose(0, 2, 3, 1).reshape(10, 400, 3).astype(np.float64)
    kept = rows[:, ::7]                                     # 20 is a multiple of 5: every 7th position
    assert kept.shape[1] == 58
    lattice = (np.arange(400) % 7 == 0).reshape(20, 20)
    assert lattice.any(axis=0).all() and lattice.any(axis=1).all()   # every row and column is met
    for batch in (1, 3, 128):
        st = collect(model, [op], Dataset(x, y), gram_classes=[0], batch_size=batch).layers["conv"]
        r0 = kept[y == 0].reshape(-1, 3)
        assert st.rows[0] == len(r0)
        np.testing.assert_allclose(st.sums[0], r0.sum(0), rtol=1e-5)
        np.testing.assert_allclose(st.grams[0], r0.T @ r0, rtol=1e-4)


def test_every_position_when_asked_or_when_sizes_are_unknown(rng):
    for model, strided in ((conv(rng), False), (conv(rng, size=("H", "W")), True)):
        inst, _ = instrument(model, scan_graph(model).editable, strided=strided)
        assert not any(n.name.endswith("kept_node") for n in inst.graph.node)
    inst, _ = instrument(conv(rng), scan_graph(conv(rng)).editable)
    assert any(n.name.endswith("kept_node") for n in inst.graph.node)


def test_patch_mode_reads_the_lattice_of_output_positions(rng):
    model = conv(rng, size=(28, 28))
    (op,) = scan_graph(model).editable
    x = rng.normal(size=(4, 3, 28, 28)).astype(np.float32)
    st = collect(model, [op], Dataset(x, np.zeros(4, dtype=np.int64)), gram_classes=[0],
                 feature_mode="patch").layers["conv"]
    assert st.rows[0] == 4 * len(range(0, 784, 5)) and st.sums[0].shape == (27,)
