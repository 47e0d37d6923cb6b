"""Gemm: a constant B weight, honouring transA/transB; input features on axis 1 (axis 0 with transA)."""
from __future__ import annotations

import onnx

from onnx_damp.ops.base import EditableOp, OpAdapter, node_attr, transpose_node


class GemmAdapter(OpAdapter):
    op_type = "Gemm"
    chunkable = True
    reads_tokens = True

    def precheck(self, node: onnx.NodeProto, constant: set) -> str:
        if node.input[0] in constant and node.input[1] not in constant:
            return "constant is the first (A) input; only a constant B weight is edited"
        return ""

    def layout(self, node, index, label, x_name, w_name, shape):
        ta, tb = bool(node_attr(node, "transA", 0)), bool(node_attr(node, "transB", 0))
        if len(shape) != 2:
            return f"Gemm weight of rank {len(shape)}"
        k = shape[1] if tb else shape[0]
        return EditableOp(label, index, "Gemm", x_name, w_name, shape, feature_dim=k,
                          feature_axis=0 if ta else 1, rank=2, trans_a=ta, trans_b=tb)

    def weight_matrix(self, op, w):
        return w if op.trans_b else w.T

    def matrix_to_weight(self, op, mat, like):
        return mat if op.trans_b else mat.T

    def features_last(self, op: EditableOp, x: str, prefix: str):
        if not op.trans_a:
            return [], x
        return [transpose_node(x, prefix + "t", [1, 0])], prefix + "t"

    def linear_map(self, op, w, node):
        return self.weight_matrix(op, w) * float(node_attr(node, "alpha", 1.0))

    def output_channels(self, op):
        return int(op.weight_shape[0] if op.trans_b else op.weight_shape[-1])

    def bias_input(self, node: onnx.NodeProto):
        return (node.input[2] if len(node.input) > 2 and node.input[2] else ""), float(node_attr(node, "beta", 1.0))
