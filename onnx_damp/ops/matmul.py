"""MatMul with a constant 2-D second input [in, out]; input features on the last axis."""
from __future__ import annotations

from onnx_damp.ops.base import EditableOp, OpAdapter


class MatMulAdapter(OpAdapter):
    op_type = "MatMul"
    chunkable = True
    reads_tokens = True

    def layout(self, node, index, label, x_name, w_name, shape):
        if len(shape) != 2:
            return f"MatMul constant of rank {len(shape)} (only 2-D [in, out] weights are edited)"
        return EditableOp(label, index, "MatMul", x_name, w_name, shape, feature_dim=shape[0], feature_axis=-1,
                          rank=None)

    def weight_matrix(self, op, w):
        return w.T

    def matrix_to_weight(self, op, mat, like):
        return mat.T

    def linear_map(self, op, w, node):
        return self.weight_matrix(op, w)

    def output_channels(self, op: EditableOp):
        return int(op.weight_shape[-1])
