"""Build a copy of the graph that also outputs per-batch statistics of every editable operator's input.

For each tapped activation the copy reshapes it to rows of input features ([rows, d]; every token, and
every spatial position on a grid of Conv inputs (grid_stride), is a row) and reduces inside the graph
to a feature sum [d], an uncentred Gram matrix [d, d] and the row count, so no activation ever leaves
onnxruntime and memory does not grow with the number of samples.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.registry import adapter
from onnx_damp.runtime.shapes import inferred_dims
from onnx_damp.runtime.tokens import TokenLayout

FEATURE_MODES = ("auto", "position", "pooled", "patch")
TOKEN_MODES = ("auto", "patch")  # modes that read the class token of token-sequence inputs
PRECISIONS = ("float32", "float64")  # in-graph arithmetic of the per-batch sum and Gram
# Conv inputs read position by position: a grid of each image's positions, every g-th along each spatial axis,
# g the first of these that still leaves MIN_ROWS_PER_IMAGE positions (grid_stride); none does, or sizes shape
# inference cannot find: every position
GRID_STRIDES = (3, 2)
MIN_ROWS_PER_IMAGE = 32


@dataclass(frozen=True)
class Tap:
    """The statistics outputs added for one activation (shared by operators that read it)."""

    key: str
    sum_name: str
    gram_name: str | None   # None: a wide layer's first pass (sums only)
    shape_name: str
    feature_dim: int
    shift_name: str | None = None  # float32 reductions: the per-batch shift the sum and Gram are taken around


def tap_key(op: EditableOp, layout: TokenLayout | None = None, mode: str = "position") -> str:
    patch = f"|patch:{op.node_name}" if unfolds(op, mode) else ""  # kernel and strides are the node's own
    return f"{op.input_name}|{op.feature_axis}|{op.rank}|{int(op.trans_a)}|{layout}{patch}"


def unfolds(op: EditableOp, mode: str) -> bool:
    """Patch mode reads a Conv's input as unfolded patches [in * k...] (groups of 1 only)."""
    return mode == "patch" and adapter(op).spatial and op.groups == 1


def patch_dim(op: EditableOp) -> int:
    """Size of the unfolded patch space of a Conv: in channels times kernel positions."""
    return int(np.prod(op.weight_shape[1:]))


def default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def instrument(model: onnx.ModelProto, ops: list[EditableOp], mode: str = "position",
               layouts: dict[str, TokenLayout] | None = None,
               precision: str = "float32", wide: "dict[str, np.ndarray | None] | None" = None,
               strided: bool = True) -> tuple[onnx.ModelProto, dict[str, Tap]]:
    """Return an instrumented copy of model and the tap of every editable operator (by node name).

    layouts (mode "auto"): operators whose input is a token sequence contribute only the first token
    (the class token) of each sample; every other operator contributes every position/token row.
    wide: operators whose input is too wide for a d x d Gram, by node name: None taps the feature sum
    only; a basis U [d, k] taps the sum and Gram of the rows projected on it, x U (k-dimensional).
    strided: Conv inputs read position by position (position and patch modes, not wide) keep a grid of each
    image's positions (grid_stride); False keeps every position.
    """
    if mode not in FEATURE_MODES:
        raise ValueError(f"unknown feature mode {mode!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown statistics precision {precision!r}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    opset = default_opset(model)
    taps: dict[str, Tap] = {}
    by_key: dict[str, Tap] = {}
    sizes = spatial_sizes(model, [op for op in ops if adapter(op).spatial]) if strided else {}
    for op in ops:
        layout = (layouts or {}).get(op.node_name) if mode in TOKEN_MODES else None
        key = tap_key(op, layout, mode)
        basis = None
        if wide is not None and op.node_name in wide:
            basis = wide[op.node_name]
            key += f"|wide:{op.node_name}" + ("|sum" if basis is None else "|proj")
        if key not in by_key:
            by_key[key] = _add_tap(g, op, len(by_key), opset, mode, layout, precision,
                                   wide=wide is not None and op.node_name in wide, basis=basis, strided=strided,
                                   spatial=sizes.get(op.node_name + ("|out" if unfolds(op, mode) else "")))
        taps[op.node_name] = by_key[key]
    return out, taps


def _class_token(g: onnx.GraphProto, x: str, p: str, d: int, layout: TokenLayout) -> tuple[list, str]:
    """Nodes selecting token 0 of every sample from a token-sequence activation x."""
    nodes = []
    if layout.kind != "axis":
        shape = [-1, layout.tokens, d] if layout.kind == "batch_major" else [layout.tokens, -1, d]
        g.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), p + "tok_shape"))
        nodes.append(helper.make_node("Reshape", [x, p + "tok_shape"], [p + "tok3"]))
        x = p + "tok3"
    axis = layout.axis if layout.kind == "axis" else (1 if layout.kind == "batch_major" else 0)
    g.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), p + "tok_index"))
    nodes.append(helper.make_node("Gather", [x, p + "tok_index"], [p + "cls"], axis=axis))
    return nodes, p + "cls"


def _unfold(g: onnx.GraphProto, op: EditableOp, x: str, p: str) -> tuple[list, str, int]:
    """Nodes turning a Conv input into unfolded patches [N, in * prod(k), out positions...], in the weight's
    (in, k...) order.

    A Conv with one-hot kernels E[j, c, k...] = 1 for j = flat(c, k...) and the operator's own pads,
    strides and dilations outputs, at each output position, exactly the patch the operator multiplies
    by its weight; moving that axis last gives [rows, in * prod(k)].
    """
    conv = g.node[op.node_index]
    d = patch_dim(op)
    kernel = tuple(op.weight_shape[1:])
    eye = np.eye(d, dtype=np.float32).reshape((d,) + kernel)
    g.initializer.append(numpy_helper.from_array(eye, p + "unfold_w"))
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute if a.name != "group"}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
    attrs["kernel_shape"] = list(kernel[1:])
    nodes = [helper.make_node("Cast", [x], [p + "x32"], to=TensorProto.FLOAT),
             helper.make_node("Conv", [p + "x32", p + "unfold_w"], [p + "patches"], **attrs)]
    return nodes, p + "patches", d


def _double_weight(g: onnx.GraphProto, op: EditableOp) -> bool:
    """Whether the operator's weight initializer is float64 (a float64 model keeps float64 reductions)."""
    return any(i.name == op.weight_name and i.data_type == TensorProto.DOUBLE for i in g.initializer)


def _reduce_float64(g: onnx.GraphProto, p: str, opset: int) -> list:
    """Sum and Gram of rows computed in float64 (exact to float64 rounding; about 2x slower on a CNN)."""
    nodes = _reduce_sum64(g, p, opset)
    nodes.append(helper.make_node("Transpose", [p + "rows64"], [p + "rowsT"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", [p + "rowsT", p + "rows64"], [p + "gram"]))
    return nodes


SHIFT_ROWS = 64  # rows (evenly strided over the batch) whose mean is the float32 reductions' shift


def _reduce_float32(g: onnx.GraphProto, p: str, opset: int) -> list:
    """Shift, shifted sum and shifted Gram of rows as float32 Gemms (onnxruntime's fast sgemm).

    Rows are centred on a shift m, the mean of about SHIFT_ROWS rows strided evenly over the batch (as
    float32; the exact shift used is an output), before the Gram, so float32 rounding is relative to the
    spread of the features, not to their mean: an uncentred float32 Gram of features with a large mean
    (e.g. after a LayerNorm with a big bias) would lose the variance to cancellation. restore_shift
    rebuilds the uncentred sum and Gram in float64, exactly for any m.
    """
    big = np.iinfo(np.int64).max
    for name, value in (("i0", [0]), ("i1", [1]), ("i_neg1", [-1]), ("i_big", [big]), ("i_rows", [SHIFT_ROWS])):
        g.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), p + name))
    one = helper.make_tensor(p + "one", TensorProto.FLOAT, [1], [1.0])
    # stride max(n // SHIFT_ROWS, 1), as step0 + (step0 == 0): int64 Max exists only from opset 12
    nodes = [helper.make_node("Cast", [p + "rows"], [p + "rows32"], to=TensorProto.FLOAT),
             helper.make_node("Shape", [p + "rows32"], [p + "rshape"]),
             helper.make_node("Slice", [p + "rshape", p + "i0", p + "i1"], [p + "n"]),
             helper.make_node("Div", [p + "n", p + "i_rows"], [p + "step0"]),
             helper.make_node("Equal", [p + "step0", p + "i0"], [p + "none"]),
             helper.make_node("Cast", [p + "none"], [p + "none64"], to=TensorProto.INT64),
             helper.make_node("Add", [p + "step0", p + "none64"], [p + "step"]),
             helper.make_node("Slice", [p + "rows32", p + "i0", p + "i_big", p + "i0", p + "step"], [p + "few"])]
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMean", [p + "few", p + "i0"], [p + "shift32"], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMean", [p + "few"], [p + "shift32"], axes=[0], keepdims=1))
    c = []  # Gemm's C is optional from opset 11; before, a zero scalar (broadcast)
    if opset < 11:
        g.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), p + "zero"))
        c = [p + "zero"]
    return nodes + [
        helper.make_node("Concat", [p + "n", p + "i1"], [p + "ones_shape"], axis=0),
        helper.make_node("ConstantOfShape", [p + "ones_shape"], [p + "ones"], value=one),
        helper.make_node("Sub", [p + "rows32", p + "shift32"], [p + "centred"]),
        helper.make_node("Gemm", [p + "ones", p + "centred"] + c, [p + "csum32"], transA=1),
        helper.make_node("Reshape", [p + "csum32", p + "i_neg1"], [p + "sum"]),
        helper.make_node("Reshape", [p + "shift32", p + "i_neg1"], [p + "shift"]),
        helper.make_node("Gemm", [p + "centred", p + "centred"] + c, [p + "gram"], transA=1)]


def restore_shift(s: np.ndarray, gram: np.ndarray, n: int, shift: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Uncentred sum and Gram of n rows x from those of x - shift (float64; exact up to the inputs' rounding).

    sum x = sum (x - m) + n m;  sum x x^T = sum (x-m)(x-m)^T + m c^T + c m^T + n m m^T, c = sum (x - m).
    """
    if shift is None:
        return s, gram
    total, m, u = shift_terms(s, n, shift)
    mu = np.outer(m, u)
    return total, np.asarray(gram, dtype=np.float64) + mu + mu.T


def shift_terms(s: np.ndarray, n: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """restore_shift split for batches summed later: the uncentred sum, and m, u with
    sum x x^T = sum (x-m)(x-m)^T + m u^T + u m^T, u = c + (n / 2) m (c = sum (x - m)).

    Summing m_b u_b^T over a class's batches as one product (M^T U) instead of two outer products per batch
    saves most of the host's per-batch work on wide taps (a 2,400-wide Gemm input: 1.5 s of 2.3 s)."""
    m, c = np.asarray(shift, dtype=np.float64), np.asarray(s, dtype=np.float64)
    return c + n * m, m, c + 0.5 * n * m


def _reduce_sum64(g: onnx.GraphProto, p: str, opset: int) -> list:
    """The float64 feature sum of rows alone (a wide layer's first pass: no Gram)."""
    nodes = [helper.make_node("Cast", [p + "rows"], [p + "rows64"], to=TensorProto.DOUBLE)]
    if opset >= 13:
        g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), p + "axes"))
        nodes.append(helper.make_node("ReduceSum", [p + "rows64", p + "axes"], [p + "sum"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceSum", [p + "rows64"], [p + "sum"], axes=[0], keepdims=0))
    return nodes


def _add_tap(g: onnx.GraphProto, op: EditableOp, k: int, opset: int, mode: str,
             layout: TokenLayout | None = None, precision: str = "float32", wide: bool = False,
             basis: np.ndarray | None = None, strided: bool = True, spatial: tuple[int, ...] | None = None) -> Tap:
    p = f"__damp_tap{k}_"
    d = op.feature_dim
    nodes: list = []
    x = op.input_name
    positions = None  # the [N, C, spatial...] tensor whose positions become rows (Conv inputs, patches)
    if layout is not None:
        nodes, x = _class_token(g, x, p, d, layout)
    elif adapter(op).spatial and mode == "pooled":
        nodes.append(helper.make_node("GlobalAveragePool", [x], [p + "gap"]))
        x = p + "gap"
    elif unfolds(op, mode):
        nodes, positions, d = _unfold(g, op, x, p)
    elif adapter(op).spatial:
        positions = x
    else:
        nodes, x = adapter(op).features_last(op, x, p)
    step = grid_stride(spatial) if strided and positions is not None and spatial and not wide else 1
    if positions is not None:
        if step > 1:  # in the activation's own type: the rows are cast (float32 or float64) once pooled
            nodes.append(grid_positions(positions, p + "grid", len(spatial), step))
            positions = p + "grid"
        more, x = adapter(op).features_last(op, positions, p)
        nodes += more
    g.initializer.append(numpy_helper.from_array(np.array([-1, d], dtype=np.int64), p + "shape_const"))
    if wide:
        nodes.append(helper.make_node("Reshape", [x, p + "shape_const"], [p + "rows_full"]))
        if basis is None:
            nodes.append(helper.make_node("Identity", [p + "rows_full"], [p + "rows"]))
            return _finish_tap(g, op, layout, mode, p, nodes, d, gram=False, shift=False,
                               reduce=_reduce_sum64(g, p, opset))
        # rows projected on the basis, in float64: x U [rows, k]
        g.initializer.append(numpy_helper.from_array(np.asarray(basis, dtype=np.float64), p + "basis"))
        nodes += [helper.make_node("Cast", [p + "rows_full"], [p + "rows_full64"], to=TensorProto.DOUBLE),
                  helper.make_node("MatMul", [p + "rows_full64", p + "basis"], [p + "rows"])]
        return _finish_tap(g, op, layout, mode, p, nodes, int(basis.shape[1]), gram=True, shift=False,
                           reduce=_reduce_float64(g, p, opset))
    nodes.append(helper.make_node("Reshape", [x, p + "shape_const"], [p + "rows"]))
    # class token and pooled taps (one row per image): float64 costs nothing there; the rest: centred float32
    few_rows = layout is not None or (adapter(op).spatial and mode == "pooled")
    shift = precision == "float32" and opset >= 10 and not few_rows and not _double_weight(g, op)  # Slice steps: 10
    reduce = _reduce_float32(g, p, opset) if shift else _reduce_float64(g, p, opset)
    return _finish_tap(g, op, layout, mode, p, nodes, d, gram=True, shift=shift, reduce=reduce)


def grid_stride(spatial: tuple[int, ...]) -> int:
    """g for a Conv input (or patches) of these spatial sizes: the first of GRID_STRIDES whose grid (every g-th
    position along each axis, from the first) keeps MIN_ROWS_PER_IMAGE positions of each image, else 1."""
    return next((q for q in GRID_STRIDES if int(np.prod([-(-v // q) for v in spatial])) >= MIN_ROWS_PER_IMAGE), 1)


def spatial_sizes(model: onnx.ModelProto, ops: list[EditableOp]) -> dict[str, tuple[int, ...]]:
    """Spatial sizes of each Conv's input (key: node name) and output (node name + "|out", the positions
    patch mode reads) where shape inference finds them all (runtime.shapes)."""
    if not ops:
        return {}
    dims = inferred_dims(model)
    found = {name: tuple(d[2:]) for name, d in dims.items()
             if len(d) >= 3 and all(isinstance(v, int) and v > 0 for v in d[2:])}
    out = {}
    for op in ops:
        node = model.graph.node[op.node_index]
        if op.input_name in found:
            out[op.node_name] = found[op.input_name]
        if node.output and node.output[0] in found:
            out[op.node_name + "|out"] = found[node.output[0]]
    return out


def grid_positions(x: str, out: str, dims: int, step: int) -> onnx.NodeProto:
    """The node keeping every step-th position along each spatial axis of x [N, C, spatial...] (from the first):
    a MaxPool of kernel 1, which onnxruntime runs in its blocked NCHWc layout, so that only the kept positions
    are laid out again for the rows (the lattice this replaced transposed the whole activation, then sliced it:
    statistics sessions of 1.42-1.47x a plain one on the MNIST CNNs and ResNet-8, 1.25-1.32x with the grid,
    docs/benchmarks.md). The same positions of every image, whatever the batch: statistics do not depend on how
    the data is batched or sharded. Of one element, the max is that element: float16 values pass exactly (the
    CPU provider runs float16 MaxPool at opsets 7 to 21), and only the kept positions are cast afterwards."""
    return helper.make_node("MaxPool", [x], [out], kernel_shape=[1] * dims, strides=[step] * dims)


def _finish_tap(g: onnx.GraphProto, op: EditableOp, layout, mode: str, p: str, nodes: list, d: int, *, gram: bool,
                shift: bool, reduce: list) -> Tap:
    """Add the reduction nodes and the statistics outputs of one tap to the graph."""
    nodes = nodes + reduce + [helper.make_node("Shape", [p + "rows"], [p + "count"])]
    for n in nodes:
        n.name = n.output[0] + "_node"
    g.node.extend(nodes)
    # float32 reductions leave the graph as float32 (exactly what was computed; the host sums in float64)
    dtype = TensorProto.FLOAT if shift else TensorProto.DOUBLE
    g.output.append(helper.make_tensor_value_info(p + "sum", dtype, [d]))
    if gram:
        g.output.append(helper.make_tensor_value_info(p + "gram", dtype, [d, d]))
    g.output.append(helper.make_tensor_value_info(p + "count", TensorProto.INT64, [2]))
    if shift:
        g.output.append(helper.make_tensor_value_info(p + "shift", dtype, [d]))
    return Tap(tap_key(op, layout, mode), p + "sum", p + "gram" if gram else None, p + "count", d,
               p + "shift" if shift else None)
