"""Conv: weight [out, in/group, k...], input features on axis 1 (grouped and depthwise too)."""
from __future__ import annotations

import numpy as np
import onnx

from onnx_damp.ops.base import EditableOp, MatrixMap, OpAdapter, node_attr, transpose_node


class ConvAdapter(OpAdapter):
    op_type = "Conv"
    spatial = True

    def layout(self, node, index, label, x_name, w_name, shape):
        groups = int(node_attr(node, "group", 1))
        if len(shape) < 3:
            return f"Conv weight of rank {len(shape)}"
        if groups < 1 or shape[0] % groups:
            return f"Conv with group={groups} does not divide its {shape[0]} output channels"
        return EditableOp(label, index, "Conv", x_name, w_name, shape, feature_dim=shape[1] * groups,
                          feature_axis=1, rank=len(shape), groups=groups)

    def weight_matrix(self, op, w):
        """[out * k..., in/group] after moving the input-channel axis last (pass one group's block of
        output channels to get that group's matrix)."""
        return np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])

    def matrix_to_weight(self, op, mat, like):
        return np.moveaxis(mat.reshape(np.moveaxis(like, 1, -1).shape), -1, 1)

    def map_inputs(self, op: EditableOp, w: np.ndarray, q: np.ndarray, fn: MatrixMap) -> np.ndarray:
        """A grouped Conv (group G) holds a block-diagonal map of its input channels: group g's output block
        sees channel block g alone, so fn acts per group with Q_g (the rows of Q for group g's channels); for
        a projection that is the diagonal block P_gg of P, exactly what the layer can express (depthwise:
        channel c scaled by 1 - alpha ||Q_c||^2). A Q of the unfolded patch space (rows in * prod(k), feature
        mode "patch") edits W reshaped [out, in * k...]."""
        if op.groups == 1 and q.shape[0] != op.feature_dim:
            return fn(w.reshape(w.shape[0], -1), q).reshape(w.shape)
        if op.groups == 1:
            return super().map_inputs(op, w, q, fn)
        # every group's matrix (weight_matrix of its block of output channels) stacked, fn batched over them:
        # one call instead of one per group (a depthwise Conv has as many groups as channels)
        out_g, in_g = w.shape[0] // op.groups, w.shape[1]
        last = np.moveaxis(w.reshape((op.groups, out_g) + w.shape[1:]), 2, -1)  # [G, out_g, k..., in_g]
        edited = fn(last.reshape(op.groups, -1, in_g), q.reshape(op.groups, in_g, q.shape[1]))
        return np.moveaxis(edited.reshape(last.shape), -1, 2).reshape(w.shape)

    def features_last(self, op, x, prefix):
        return [transpose_node(x, prefix + "t", [0] + list(range(2, op.rank)) + [1])], prefix + "t"

    def output_channels(self, op):
        return int(op.weight_shape[0])

    def bias_input(self, node: onnx.NodeProto):
        return (node.input[2] if len(node.input) > 2 and node.input[2] else ""), 1.0
