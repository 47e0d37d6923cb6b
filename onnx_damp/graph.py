"""Finding editable operators in an ONNX graph and reading/writing their weights.

An editable operator has a constant weight that acts linearly on one input feature axis:
Conv (weight [out, in/group, k...], feature axis 1 of the input), Gemm (constant B, honouring
transA/transB) and MatMul with a constant 2-D second input [in, out] (feature axis last).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass
class EditableOp:
    """One operator whose weight DAMP edits, with how its input features are laid out."""

    node_name: str
    node_index: int
    op_type: str
    input_name: str          # the activation the operator consumes
    weight_name: str         # initializer holding the weight
    weight_shape: tuple
    feature_dim: int         # size of the input-feature space the edit acts in
    feature_axis: int        # axis of the activation holding the features (-1 = last)
    rank: int | None         # activation rank when known from the operator (Conv), else None
    trans_a: bool = False
    trans_b: bool = False
    groups: int = 1
    shared: bool = False     # the weight initializer also feeds other nodes
    depth_index: int = 0
    depth: float = 0.0

    def to_dict(self) -> dict:
        return {"node": self.node_name, "op_type": self.op_type, "weight": self.weight_name,
                "weight_shape": list(self.weight_shape), "feature_dim": self.feature_dim,
                "depth_index": self.depth_index, "depth": round(self.depth, 4), "shared": self.shared,
                "input": self.input_name}


@dataclass
class SkippedOp:
    """An operator that looks learnable but is not edited, with the reason."""

    node_name: str
    op_type: str
    reason: str

    def to_dict(self) -> dict:
        return {"node": self.node_name, "op_type": self.op_type, "reason": self.reason}


@dataclass
class GraphScan:
    editable: list[EditableOp] = field(default_factory=list)
    skipped: list[SkippedOp] = field(default_factory=list)


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A stable, readable name for a node (exporters sometimes leave names empty)."""
    return node.name or f"{node.op_type}_{index}"


def scan_graph(model: onnx.ModelProto) -> GraphScan:
    """List the editable operators of the main graph in topological order, and the skipped ones."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input if name)
    scan = GraphScan()
    for i, node in enumerate(graph.node):
        label = node_label(node, i)
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type not in ("Conv", "Gemm", "MatMul"):
            if node.op_type in ("ConvTranspose", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"):
                scan.skipped.append(SkippedOp(label, node.op_type, f"{node.op_type} is not supported"))
            continue
        op = _editable(node, i, label, inits)
        if isinstance(op, str):
            scan.skipped.append(SkippedOp(label, node.op_type, op))
        else:
            op.shared = uses[op.weight_name] > 1
            scan.editable.append(op)
    n = len(scan.editable)
    for k, op in enumerate(scan.editable):
        op.depth_index = k
        op.depth = k / (n - 1) if n > 1 else 1.0
    return scan


def _editable(node: onnx.NodeProto, index: int, label: str, inits: dict) -> "EditableOp | str":
    """Describe node as an EditableOp, or return why it cannot be edited."""
    if len(node.input) < 2:
        return "missing weight input"
    x_name, w_name = node.input[0], node.input[1]
    if node.op_type == "Gemm" and x_name in inits and w_name not in inits:
        return "constant is the first (A) input; only a constant B weight is edited"
    if w_name not in inits:
        return "weight is computed at run time (activation x activation), not a constant initializer"
    if x_name in inits:
        return "both inputs are constants"
    w = inits[w_name]
    shape = tuple(w.dims)
    if w.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
        return f"weight dtype {onnx.TensorProto.DataType.Name(w.data_type)} is not a float type"
    if node.op_type == "Conv":
        groups = int(_attr(node, "group", 1))
        if groups != 1:
            return f"grouped convolution (group={groups}) is not edited yet"
        return EditableOp(label, index, "Conv", x_name, w_name, shape, feature_dim=shape[1], feature_axis=1,
                          rank=len(shape), groups=groups)
    if node.op_type == "Gemm":
        ta, tb = bool(_attr(node, "transA", 0)), bool(_attr(node, "transB", 0))
        if len(shape) != 2:
            return f"Gemm weight of rank {len(shape)}"
        k = shape[1] if tb else shape[0]
        return EditableOp(label, index, "Gemm", x_name, w_name, shape, feature_dim=k,
                          feature_axis=0 if ta else 1, rank=2, trans_a=ta, trans_b=tb)
    if len(shape) != 2:
        return f"MatMul constant of rank {len(shape)} (only 2-D [in, out] weights are edited)"
    return EditableOp(label, index, "MatMul", x_name, w_name, shape, feature_dim=shape[0], feature_axis=-1,
                      rank=None)


def weight_matrix(op: EditableOp, w: np.ndarray) -> np.ndarray:
    """View a weight as [out-ish rows, in-features] so the edit is W <- W P (P acts on input features).

    Conv weights become [out * k..., in] after moving the input-channel axis last.
    """
    if op.op_type == "Conv":
        return np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    if op.op_type == "Gemm":
        return w if op.trans_b else w.T
    return w.T  # MatMul [in, out]


def matrix_to_weight(op: EditableOp, mat: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of weight_matrix: put an edited [rows, in] matrix back in the weight's layout."""
    if op.op_type == "Conv":
        moved = np.moveaxis(like, 1, -1).shape
        return np.moveaxis(mat.reshape(moved), -1, 1)
    if op.op_type == "Gemm":
        return mat if op.trans_b else mat.T
    return mat.T


def read_initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    raise KeyError(name)


def write_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    """Replace an initializer's values in place, keeping its name and dtype."""
    for t in model.graph.initializer:
        if t.name == name:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value.astype(dtype)), name))
            return
    raise KeyError(name)


def current_weight_name(model: onnx.ModelProto, op: EditableOp) -> str:
    """The initializer the node reads its weight from now (it may have been given its own copy)."""
    return model.graph.node[op.node_index].input[1]


def give_own_copy(model: onnx.ModelProto, op: EditableOp) -> str:
    """Give a node with a shared weight its own initializer copy, so an edit cannot leak elsewhere."""
    node = model.graph.node[op.node_index]
    value = read_initializer(model, node.input[1])
    existing = {t.name for t in model.graph.initializer}
    new_name, k = f"{op.weight_name}__damp_{op.node_name}", 1
    while new_name in existing:
        new_name, k = f"{op.weight_name}__damp_{op.node_name}_{k}", k + 1
    model.graph.initializer.append(numpy_helper.from_array(value, new_name))
    node.input[1] = new_name
    return new_name
