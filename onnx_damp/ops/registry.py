"""The operator registry: op type -> adapter, and the generic weight views that dispatch on it."""
from __future__ import annotations

import numpy as np

from onnx_damp.ops.base import EditableOp, OpAdapter
from onnx_damp.ops.conv import ConvAdapter
from onnx_damp.ops.gemm import GemmAdapter
from onnx_damp.ops.matmul import MatMulAdapter

ADAPTERS: dict[str, OpAdapter] = {a.op_type: a for a in (ConvAdapter(), GemmAdapter(), MatMulAdapter())}
LINEAR_OPS = tuple(ADAPTERS)


def adapter(op: "EditableOp | str") -> OpAdapter:
    """The adapter of an editable operator or an op type."""
    return ADAPTERS[op if isinstance(op, str) else op.op_type]


def weight_matrix(op: EditableOp, w: np.ndarray) -> np.ndarray:
    """op's weight as [rows, in-features] (see OpAdapter.weight_matrix)."""
    return adapter(op).weight_matrix(op, w)


def matrix_to_weight(op: EditableOp, mat: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Inverse of weight_matrix."""
    return adapter(op).matrix_to_weight(op, mat, like)
