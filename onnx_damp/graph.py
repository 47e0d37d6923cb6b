"""Finding editable operators in an ONNX graph and reading/writing their weights.

An editable operator has a constant weight that acts linearly on one input feature axis:
Conv (weight [out, in/group, k...], feature axis 1 of the input; grouped and depthwise too),
Gemm (constant B, honouring transA/transB) and MatMul with a constant 2-D second input [in, out]
(feature axis last).

The weight may sit in an initializer or a Constant node, and may reach the operator through a chain
of Identity, Transpose, Reshape and Cast nodes. Edits are written back to that source constant
through the inverse of the chain, so the graph keeps its nodes; when the source or a node of the
chain also feeds something else, the operator gets its own initializer copy of the weight it sees.
Operators inside control-flow subgraphs (If/Loop/Scan) and model-local functions are reported, not edited.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

DEFAULT_DOMAINS = ("", "ai.onnx")
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
UNSUPPORTED_OPS = {
    "ConvTranspose": "ConvTranspose is not supported (its weight [in, out/group, k...] is not edited)",
    "QLinearConv": "QLinearConv is not supported (quantized weight)",
    "QLinearMatMul": "QLinearMatMul is not supported (quantized weight)",
    "ConvInteger": "ConvInteger is not supported (integer weight)",
    "MatMulInteger": "MatMulInteger is not supported (integer weight)",
}
CHAIN_OPS = ("Identity", "Transpose", "Reshape", "Cast")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
RUNTIME_WEIGHT = "weight is computed at run time (activation x activation), not a constant initializer"


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

    def to_dict(self) -> dict:
        return {"node": self.node_name, "op_type": self.op_type, "weight": self.weight_name,
                "weight_path": self.weight_path or self.weight_name,
                "weight_shape": list(self.weight_shape), "feature_dim": self.feature_dim, "groups": self.groups,
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


def _dtype_name(dtype: int) -> str:
    return onnx.TensorProto.DataType.Name(dtype)


def _np_dtype(dtype: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype))


# ------------------------------------------------------------------------------------------- graph index
@dataclass
class GraphIndex:
    """Lookup tables of a graph: initializers, the node producing each tensor, consumer counts, constants."""

    graph: onnx.GraphProto
    inits: dict[str, onnx.TensorProto]
    producer: dict[str, int]
    uses: Counter                # node inputs (subgraphs included) and graph outputs reading each tensor
    constant: set[str]           # tensors computed from initializers and Constant nodes only


def subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """The (attribute name, graph) pairs of a node's control-flow bodies (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for k, g in enumerate(a.graphs):
                yield f"{a.name}[{k}]", g


def _nested_reads(graph: onnx.GraphProto) -> Iterator[str]:
    """Every tensor name read inside graph and its subgraphs (outer-scope reads included)."""
    for node in graph.node:
        yield from (n for n in node.input if n)
        for _, g in subgraphs(node):
            yield from _nested_reads(g)
    yield from (o.name for o in graph.output)


def _folds_to_constant(node: onnx.NodeProto, constant: set[str]) -> bool:
    """Whether a node's outputs are fixed once its constant inputs are (no randomness, no subgraph)."""
    return (node.domain in DEFAULT_DOMAINS and not node.op_type.startswith("Random")
            and all(n in constant for n in node.input if n) and next(subgraphs(node), None) is None)


def index_graph(graph: onnx.GraphProto) -> GraphIndex:
    """Build the lookup tables of graph (the main graph of a model)."""
    inits = {t.name: t for t in graph.initializer}
    producer, uses, constant = {}, Counter(), set(inits)
    for i, node in enumerate(graph.node):
        for out in node.output:
            producer[out] = i
        uses.update(n for n in node.input if n)
        for _, g in subgraphs(node):
            uses.update(_nested_reads(g))
        if _folds_to_constant(node, constant):
            constant.update(o for o in node.output if o)
    uses.update(o.name for o in graph.output)
    return GraphIndex(graph, inits, producer, uses, constant)


# ------------------------------------------------------------------------------------------ weight chains
@dataclass(frozen=True)
class ChainStep:
    """One Identity/Transpose/Reshape/Cast node between a weight's source constant and its operator."""

    node_index: int
    op_type: str
    output: str
    in_shape: tuple
    out_shape: tuple
    out_dtype: int
    perm: tuple = ()

    def forward(self, x: np.ndarray) -> np.ndarray:
        """What the node computes from its input value."""
        if self.op_type == "Transpose":
            return np.transpose(x, self.perm)
        if self.op_type == "Reshape":
            return x.reshape(self.out_shape)
        if self.op_type == "Cast":
            return x.astype(_np_dtype(self.out_dtype))
        return x

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """Map a value of the node's output back to its input layout (Cast: kept float64, cast once at the source)."""
        if self.op_type == "Transpose":
            return np.transpose(y, np.argsort(self.perm))
        if self.op_type == "Reshape":
            return y.reshape(self.in_shape)
        return y

    def describe(self) -> str:
        if self.op_type == "Transpose":
            return f"Transpose(perm=[{','.join(map(str, self.perm))}])"
        if self.op_type == "Reshape":
            return f"Reshape(shape=[{','.join(map(str, self.out_shape))}])"
        if self.op_type == "Cast":
            return f"Cast(to={_dtype_name(self.out_dtype)})"
        return self.op_type


@dataclass
class WeightRef:
    """Where an operator's weight comes from: a source constant and the chain of nodes up to the operator."""

    source: str                  # initializer name, or the output name of a Constant node
    constant_node: int | None    # index of that Constant node; None for an initializer
    chain: list[ChainStep]       # source side first
    source_shape: tuple
    source_dtype: int
    exclusive: bool              # the source and every chain output feed only this path

    @property
    def shape(self) -> tuple:
        return self.chain[-1].out_shape if self.chain else self.source_shape

    @property
    def dtype(self) -> int:
        return self.chain[-1].out_dtype if self.chain else self.source_dtype

    @property
    def consumed(self) -> str:
        """The tensor the operator reads directly."""
        return self.chain[-1].output if self.chain else self.source

    def describe(self) -> str:
        src = f"Constant({self.source})" if self.constant_node is not None else self.source
        return " <- ".join([s.describe() for s in reversed(self.chain)] + [src])


def _constant_tensor(node: onnx.NodeProto) -> "onnx.TensorProto | str":
    """The `value` tensor of a Constant node, or why the node's value is not an editable tensor."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
    kinds = ", ".join(a.name for a in node.attribute) or "none"
    return f"weight is a Constant node with attribute {kinds}; only a `value` tensor is edited"


def _const_array(gi: GraphIndex, name: str) -> np.ndarray | None:
    """The value of a small constant read directly from an initializer or a Constant node, else None."""
    if name in gi.inits:
        return numpy_helper.to_array(gi.inits[name])
    k = gi.producer.get(name)
    if k is not None and gi.graph.node[k].op_type == "Constant":
        t = _constant_tensor(gi.graph.node[k])
        return None if isinstance(t, str) else numpy_helper.to_array(t)
    return None


def _reshape_dims(in_shape: tuple, shape: list[int], allowzero: bool) -> "tuple | str":
    """Output dims of ONNX Reshape (0 copies the input dim unless allowzero, one -1 is inferred)."""
    dims = [in_shape[i] if s == 0 and not allowzero and i < len(in_shape) else int(s) for i, s in enumerate(shape)]
    total = int(np.prod(in_shape, dtype=np.int64))
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if dims.count(-1) == 1 and known > 0 and total % known == 0:
        dims[dims.index(-1)] = total // known
    if dims.count(-1) or int(np.prod(dims, dtype=np.int64)) != total:
        return f"Reshape of a {list(in_shape)} weight to {shape} is not valid"
    return tuple(dims)


def _chain_step(gi: GraphIndex, k: int, in_shape: tuple, in_dtype: int) -> "ChainStep | str":
    """Describe chain node k applied to a weight of in_shape/in_dtype, or why it cannot be followed."""
    node = gi.graph.node[k]
    label, out = node_label(node, k), node.output[0]
    if node.op_type == "Transpose":
        perm = tuple(int(p) for p in _attr(node, "perm", list(range(len(in_shape)))[::-1]))
        if sorted(perm) != list(range(len(in_shape))):
            return f"Transpose node {label} has perm {list(perm)} for a rank-{len(in_shape)} weight"
        return ChainStep(k, "Transpose", out, in_shape, tuple(in_shape[p] for p in perm), in_dtype, perm)
    if node.op_type == "Reshape":
        shape = _attr(node, "shape", None)
        if shape is None:
            value = _const_array(gi, node.input[1]) if len(node.input) > 1 else None
            if value is None:
                return f"Reshape node {label} has a shape that is not a constant"
            shape = value.reshape(-1).tolist()
        dims = _reshape_dims(in_shape, list(shape), bool(_attr(node, "allowzero", 0)))
        return dims if isinstance(dims, str) else ChainStep(k, "Reshape", out, in_shape, dims, in_dtype)
    if node.op_type == "Cast":
        to = int(_attr(node, "to", 0))
        if to not in FLOAT_TYPES:
            return f"Cast node {label} casts the weight to {_dtype_name(to)}, not a float type"
        return ChainStep(k, "Cast", out, in_shape, in_shape, to)
    return ChainStep(k, node.op_type, out, in_shape, in_shape, in_dtype)


def resolve_weight(gi: GraphIndex, name: str) -> "WeightRef | str":
    """Follow name back through Identity/Transpose/Reshape/Cast nodes to its source constant, or say why not."""
    steps: list[int] = []  # operator side first
    while name not in gi.inits:
        k = gi.producer.get(name)
        if k is None or name not in gi.constant:
            return RUNTIME_WEIGHT
        node = gi.graph.node[k]
        if node.domain in DEFAULT_DOMAINS and node.op_type == "Constant":
            break
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in CHAIN_OPS or not node.input:
            return (f"weight is computed from constants by {node.op_type} node {node_label(node, k)}; "
                    f"only {', '.join(CHAIN_OPS)} nodes are followed back to the source")
        steps.append(k)
        name = node.input[0]
    return _build_ref(gi, name, steps[::-1])


def _build_ref(gi: GraphIndex, source: str, steps: list[int]) -> "WeightRef | str":
    """Propagate shape and dtype from the source constant through the chain nodes (source side first)."""
    const_node = None if source in gi.inits else gi.producer[source]
    tensor = gi.inits[source] if const_node is None else _constant_tensor(gi.graph.node[const_node])
    if isinstance(tensor, str):
        return tensor
    if tensor.data_type not in FLOAT_TYPES:
        return f"weight dtype {_dtype_name(tensor.data_type)} is not a float type"
    source_shape = tuple(int(d) for d in tensor.dims)
    shape, dtype, chain = source_shape, tensor.data_type, []
    for k in steps:
        step = _chain_step(gi, k, shape, dtype)
        if isinstance(step, str):
            return step
        chain.append(step)
        shape, dtype = step.out_shape, step.out_dtype
    exclusive = all(gi.uses[t] == 1 for t in [source] + [s.output for s in chain])
    return WeightRef(source, const_node, chain, source_shape, tensor.data_type, exclusive)


def _source_tensor(gi: GraphIndex, ref: WeightRef) -> onnx.TensorProto:
    if ref.constant_node is None:
        return gi.inits[ref.source]
    return _constant_tensor(gi.graph.node[ref.constant_node])


def effective_weight(gi: GraphIndex, ref: WeightRef) -> np.ndarray:
    """The weight value exactly as the operator sees it (source constant pushed through the chain)."""
    value = numpy_helper.to_array(_source_tensor(gi, ref))
    for step in ref.chain:
        value = step.forward(value)
    return value


def store_weight(gi: GraphIndex, ref: WeightRef, value: np.ndarray) -> None:
    """Write an edited operator-side weight back to the source constant through the inverse chain."""
    for step in reversed(ref.chain):
        value = step.inverse(value)
    tensor = _source_tensor(gi, ref)
    arr = np.ascontiguousarray(value.astype(_np_dtype(tensor.data_type)))
    tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))


# ------------------------------------------------------------------------------------------------- scan
def scan_graph(model: onnx.ModelProto) -> GraphScan:
    """List the editable operators of the main graph in topological order, and the skipped ones."""
    graph = model.graph
    gi = index_graph(graph)
    scan = GraphScan()
    for i, node in enumerate(graph.node):
        label = node_label(node, i)
        for attr, g in subgraphs(node):
            scan.skipped += _nested_skips(g, f"{label}/{attr}", f"the {attr} subgraph of {node.op_type} node {label}")
        if node.domain not in DEFAULT_DOMAINS:
            continue
        if node.op_type in UNSUPPORTED_OPS:
            scan.skipped.append(SkippedOp(label, node.op_type, UNSUPPORTED_OPS[node.op_type]))
        if node.op_type not in LINEAR_OPS:
            continue
        op = _editable(node, i, label, gi)
        if isinstance(op, str):
            scan.skipped.append(SkippedOp(label, node.op_type, op))
        else:
            scan.editable.append(op)
    for fn in model.functions:
        scan.skipped += _nested_skips(fn, f"{fn.domain}:{fn.name}", f"model-local function {fn.domain}:{fn.name}")
    n = len(scan.editable)
    for k, op in enumerate(scan.editable):
        op.depth_index = k
        op.depth = k / (n - 1) if n > 1 else 1.0
    return scan


def _nested_skips(body: "onnx.GraphProto | onnx.FunctionProto", prefix: str, where: str) -> list[SkippedOp]:
    """Skip records for every weight operator inside a subgraph or function body, recursively."""
    out = []
    for i, node in enumerate(body.node):
        label = f"{prefix}/{node_label(node, i)}"
        if node.domain in DEFAULT_DOMAINS and (node.op_type in LINEAR_OPS or node.op_type in UNSUPPORTED_OPS):
            out.append(SkippedOp(label, node.op_type, f"inside {where}: operators in control-flow subgraphs "
                                                      "and model-local functions are not edited"))
        for attr, g in subgraphs(node):
            out += _nested_skips(g, f"{label}/{attr}", where)
    return out


def _editable(node: onnx.NodeProto, index: int, label: str, gi: GraphIndex) -> "EditableOp | str":
    """Describe node as an EditableOp, or return why it cannot be edited."""
    if len(node.input) < 2 or not node.input[1]:
        return "missing weight input"
    x_name, w_name = node.input[0], node.input[1]
    if node.op_type == "Gemm" and x_name in gi.constant and w_name not in gi.constant:
        return "constant is the first (A) input; only a constant B weight is edited"
    if w_name not in gi.constant:
        return RUNTIME_WEIGHT
    if x_name in gi.constant:
        return "both inputs are constants"
    ref = resolve_weight(gi, w_name)
    if isinstance(ref, str):
        return ref
    op = _layout(node, index, label, x_name, ref.source, ref.shape)
    if isinstance(op, EditableOp):
        op.shared, op.weight_path = not ref.exclusive, ref.describe()
    return op


def _layout(node: onnx.NodeProto, index: int, label: str, x_name: str, w_name: str,
            shape: tuple) -> "EditableOp | str":
    """The input-feature layout of a Conv/Gemm/MatMul whose weight (as it sees it) has the given shape."""
    if node.op_type == "Conv":
        groups = int(_attr(node, "group", 1))
        if len(shape) < 3:
            return f"Conv weight of rank {len(shape)}"
        if groups < 1 or shape[0] % groups:
            return f"Conv with group={groups} does not divide its {shape[0]} output channels"
        return EditableOp(label, index, "Conv", x_name, w_name, shape, feature_dim=shape[1] * groups,
                          feature_axis=1, rank=len(shape), groups=groups)
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


# ------------------------------------------------------------------------------------------ weight access
def weight_matrix(op: EditableOp, w: np.ndarray) -> np.ndarray:
    """View a weight as [out-ish rows, in-features] so the edit is W <- W P (P acts on input features).

    Conv weights become [out * k..., in/group] after moving the input-channel axis last (for a grouped
    Conv pass one group's block of output channels to get that group's matrix).
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


def weight_ref(gi: GraphIndex, op: EditableOp) -> WeightRef:
    """Resolve op's weight in the graph as it is now (an earlier edit may have given it its own copy)."""
    ref = resolve_weight(gi, gi.graph.node[op.node_index].input[1])
    if isinstance(ref, str):
        raise RuntimeError(f"weight of {op.node_name} can no longer be resolved: {ref}")
    return ref


def read_weight(gi: GraphIndex, op: EditableOp) -> np.ndarray:
    """The weight op's node sees now, as an array in the operator's layout and dtype."""
    return effective_weight(gi, weight_ref(gi, op))


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
    """The tensor the node reads its weight from now (it may have been given its own copy)."""
    return model.graph.node[op.node_index].input[1]


def give_own_copy(gi: GraphIndex, op: EditableOp, value: np.ndarray) -> str:
    """Point op's node at a new initializer holding value (its weight as it sees it), so an edit cannot leak."""
    node = gi.graph.node[op.node_index]
    new_name, k = f"{op.weight_name}__damp_{op.node_name}", 1
    while new_name in gi.inits or new_name in gi.producer:
        new_name, k = f"{op.weight_name}__damp_{op.node_name}_{k}", k + 1
    gi.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), new_name))
    gi.uses[node.input[1]] -= 1
    node.input[1] = new_name
    gi.inits[new_name], gi.uses[new_name] = gi.graph.initializer[-1], 1
    gi.constant.add(new_name)
    return new_name
