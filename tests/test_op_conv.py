"""The Conv adapter: layout, weight views, the edit as an input-channel map, feature rows, bias."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from adapter_checks import check_bias, check_features_last, check_map_is_input_map, check_round_trip, the_op
from onnx_damp.ops.registry import adapter
from tiny_models import conv_model, make_model


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def grouped_conv(rng, cin=4, cout=6, groups=2):
    w = rng.normal(size=(cout, cin // groups, 3, 3)).astype(np.float32)
    b = rng.normal(size=cout).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", group=groups, pads=[1, 1, 1, 1])]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 5, 5])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", cout, 5, 5])], {"w": w, "b": b}), w


def channel_project(x, p):
    return np.einsum("dc,nchw->ndhw", p, x)


def test_conv_layout_views_and_bias(rng):
    model, arrays = conv_model(rng, cin=3, cout=4)
    op = the_op(model, "Conv", 3)
    assert op.feature_axis == 1 and op.rank == 4 and adapter(op).spatial
    check_round_trip(op, arrays["w"])
    check_bias(model, op, 4)


def test_conv_edit_is_an_input_channel_projection(rng):
    model, _ = conv_model(rng, cin=3, cout=4)
    op = the_op(model, "Conv", 3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 1)))
    check_map_is_input_map(model, op, rng.normal(size=(2, 3, 6, 6)).astype(np.float32), q, 0.7, channel_project)


def test_grouped_conv_edits_each_group_with_its_block(rng):
    model, w = grouped_conv(rng)
    op = the_op(model, "Conv", 4)
    assert op.groups == 2
    check_round_trip(op, w[:3])  # one group's block of output channels
    q = np.zeros((4, 1))
    q[2:, 0] = rng.normal(size=2)  # a direction inside group 1's channels: the layer can express it exactly
    q /= np.linalg.norm(q)
    check_map_is_input_map(model, op, rng.normal(size=(2, 4, 5, 5)).astype(np.float32), q, 1.0, channel_project)


def test_conv_feature_rows_are_positions(rng):
    model, _ = conv_model(rng, cin=3)
    op = the_op(model, "Conv", 3)
    x = rng.normal(size=(2, 3, 4, 4)).astype(np.float32)
    check_features_last(op, x, np.moveaxis(x, 1, -1).reshape(-1, 3))
