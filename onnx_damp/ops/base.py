"""What an operator adapter is: the editable operator record, and the questions each operator type answers.

Every operator type DAMP edits has one adapter (ops/conv.py, ops/gemm.py, ops/matmul.py), registered in
ops/registry.py: where its input features are, its weight as a [rows, in-features] matrix and back, how to
apply a map on those features to the weight, the graph nodes that lay its input out as feature rows, and its
output bias. Adding an operator type is one new adapter file and its test.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

# (W as [rows, d], Q) -> edited W; also batched over leading axes ([G, rows, d] with Q [G, d, r], grouped Conv)
MatrixMap = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class EditableOp:
    """One operator whose weight DAMP edits, with how its input features are laid out."""

    node_name: str
    node_index: int
    op_type: str
    input_name: str          # the activation the operator consumes
    weight_name: str         # source constant of the weight: an initializer or a Constant node's output
    weight_shape: tuple      # shape of the weight as the operator sees it (after any Transpose/Reshape chain)
    feature_dim: int         # size of the input-feature space the edit acts in (all input channels for Conv)
    feature_axis: int        # axis of the activation holding the features (-1 = last)
    rank: int | None         # activation rank when known from the operator (Conv), else None
    trans_a: bool = False
    trans_b: bool = False
    groups: int = 1
    shared: bool = False     # the source or a node between it and the operator also feeds something else
    depth_index: int = 0
    depth: float = 0.0
    weight_path: str = ""    # how the weight reaches the operator, e.g. "Transpose(perm=[1,0]) <- W"
    scope: str = ""          # module path recorded by the exporter (torch dynamo), e.g. "stage2.conv1"

    def to_dict(self) -> dict:
        """The operator as it appears in `inspect --json`."""
        return {"node": self.node_name, "op_type": self.op_type, "scope": self.scope, "weight": self.weight_name,
                "weight_path": self.weight_path or self.weight_name,
                "weight_shape": list(self.weight_shape), "feature_dim": self.feature_dim, "groups": self.groups,
                "depth_index": self.depth_index, "depth": round(self.depth, 4), "shared": self.shared,
                "input": self.input_name}


class OpAdapter:
    """The behaviour of one operator type; stateless, one instance per type in the registry."""

    op_type = ""
    spatial = False       # the input has spatial positions (Conv): pooled and patch feature modes apply
    chunkable = False     # a large float weight may be edited block by block of matrix rows
    reads_tokens = False  # its input may carry a token axis (probed for transformer layouts)

    def precheck(self, node: onnx.NodeProto, constant: set) -> str:
        """Why node cannot be edited before its weight is resolved ('' when it may be); constant: constant names."""
        return ""

    def layout(self, node: onnx.NodeProto, index: int, label: str, x_name: str, w_name: str,
               shape: tuple) -> "EditableOp | str":
        """The editable operator for node whose weight (as it sees it) has shape, or why it is not editable."""
        raise NotImplementedError

    def weight_matrix(self, op: EditableOp, w: np.ndarray) -> np.ndarray:
        """The weight as [rows, in-features], so the edit is W <- W P with P acting on input features."""
        raise NotImplementedError

    def matrix_to_weight(self, op: EditableOp, mat: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Inverse of weight_matrix: an edited [rows, in-features] matrix back in the weight's layout."""
        raise NotImplementedError

    def map_inputs(self, op: EditableOp, w: np.ndarray, q: np.ndarray, fn: MatrixMap) -> np.ndarray:
        """fn applied to the weight's input-feature matrix (fn(W, Q) -> edited W), in the weight's layout."""
        return self.matrix_to_weight(op, fn(self.weight_matrix(op, w), q), w)

    def features_last(self, op: EditableOp, x: str, prefix: str) -> tuple[list, str]:
        """Nodes that move the input's feature axis last (so a Reshape to [-1, d] gives feature rows)."""
        return [], x

    def token_candidate(self, op: EditableOp) -> bool:
        """Whether op's input is probed for a token layout (transformer sequences)."""
        return self.reads_tokens and not op.trans_a

    def linear_map(self, op: EditableOp, w: np.ndarray, node: onnx.NodeProto) -> "np.ndarray | str":
        """The [outputs, in-features] matrix op applies (attribute scales included), or why there is none."""
        return f"the last editable operator {op.node_name} is a {op.op_type}, not a Gemm/MatMul"

    def output_channels(self, op: EditableOp) -> int:
        """Number of output channels (the length of a per-channel bias)."""
        raise NotImplementedError

    def bias_input(self, node: onnx.NodeProto) -> "tuple[str, float] | None":
        """(bias input name or '', the scale it enters with), or None when the bias is a following Add."""
        return None


def transpose_node(x: str, out: str, perm: list[int]) -> onnx.NodeProto:
    return helper.make_node("Transpose", [x], [out], perm=perm)


def node_attr(node: onnx.NodeProto, name: str, default):
    """The value of a node attribute, or default when the node does not set it."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
