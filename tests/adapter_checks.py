"""Checks every operator adapter must pass (ops/registry.py), shared by the tests/test_op_<op>.py files."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.graph import scan_graph
from onnx_damp.ops.registry import adapter
from onnx_damp.ops.weights import index_graph, output_bias, read_initializer, write_initializer


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def the_op(model: onnx.ModelProto, op_type: str, feature_dim: int) -> EditableOp:
    """The one editable operator of model: of op_type, with feature_dim input features."""
    ops = scan_graph(model).editable
    assert [o.op_type for o in ops].count(op_type) == 1
    op = next(o for o in ops if o.op_type == op_type)
    assert op.feature_dim == feature_dim
    return op


def check_round_trip(op: EditableOp, w: np.ndarray) -> None:
    """weight_matrix is [rows, feature_dim (per group)] and matrix_to_weight inverts it exactly."""
    ad = adapter(op)
    mat = ad.weight_matrix(op, w)
    assert mat.shape[1] == op.feature_dim // op.groups
    np.testing.assert_array_equal(ad.matrix_to_weight(op, mat, w), w)


def check_map_is_input_map(model: onnx.ModelProto, op: EditableOp, x: np.ndarray, q: np.ndarray, alpha: float,
                           project_input) -> None:
    """Editing W <- W (I - alpha Q Q^T) through map_inputs gives the model that sees the projected input."""
    w = read_initializer(model, op.weight_name).astype(np.float64)
    # a MatrixMap may get stacked [G, rows, d] matrices (grouped Conv): the map is written batched
    new = adapter(op).map_inputs(op, w, q, lambda mat, qq: mat - alpha * (mat @ qq) @ np.swapaxes(qq, -1, -2))
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    write_initializer(edited, op.weight_name, new.astype(np.float32))
    p = np.eye(q.shape[0]) - alpha * q @ q.T
    np.testing.assert_allclose(run(edited, x), run(model, project_input(x, p).astype(np.float32)),
                               rtol=1e-4, atol=1e-4)


def check_features_last(op: EditableOp, x: np.ndarray, expected_rows: np.ndarray) -> None:
    """features_last plus a Reshape to [-1, d] turns op's input into the expected feature rows."""
    nodes, name = adapter(op).features_last(op, "x", "p_")
    shape = numpy_helper.from_array(np.array([-1, op.feature_dim], dtype=np.int64), "shape")
    nodes = nodes + [helper.make_node("Reshape", [name, "shape"], ["rows"])]
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    got = run(model, x)
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(expected_rows, axis=0), rtol=1e-6)
    assert got.shape == expected_rows.shape


def check_bias(model: onnx.ModelProto, op: EditableOp, channels: int) -> None:
    """The output bias is found, with one value per output channel."""
    ref = output_bias(index_graph(model.graph), op)
    assert not isinstance(ref, str), ref
    assert ref.channels == channels == adapter(op).output_channels(op)
