"""Reading and writing operator weights: graph index, weight chains, quantised (QDQ) weights, own copies.

An operator's weight may sit in an initializer or a Constant node and reach the operator through a chain
of Identity, Transpose, Reshape and Cast nodes. A statically quantised (QDQ) weight is an int8/uint8
(or int16/uint16) constant behind a DequantizeLinear node (per-tensor, or per-channel with `axis`),
possibly followed by such a chain. Edits are written back to the source constant through the inverse
of the chain; a quantised weight is requantised with its existing scales and zero points, so the graph
keeps its nodes. When the source or a node of the chain also feeds something else, the operator gets its
own (float) initializer copy of the weight it sees.
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_damp.ops.base import node_attr
from onnx_damp.ops.registry import adapter

if TYPE_CHECKING:
    from onnx_damp.ops.base import EditableOp

DEFAULT_DOMAINS = ("", "ai.onnx")
CHAIN_OPS = ("Identity", "Transpose", "Reshape", "Cast")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
QUANT_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16)
RUNTIME_WEIGHT = "weight is computed at run time (activation x activation), not a constant initializer"



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

    def for_copy(self, graph: onnx.GraphProto) -> "GraphIndex":
        """This index over graph, a copy of self.graph (CopyFrom, nothing changed since): the tables are copied,
        not rebuilt (index_graph walks every node: 16 ms on a 683-node ViT, once per candidate)."""
        if len(graph.node) != len(self.graph.node) or len(graph.initializer) != len(self.graph.initializer):
            raise ValueError("GraphIndex.for_copy: the graph is not a copy of the indexed one")
        return GraphIndex(graph, {t.name: t for t in graph.initializer}, dict(self.producer), Counter(self.uses),
                          set(self.constant))


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
    """Whether a node's outputs are fixed once its constant inputs are (no randomness; the caller has checked
    that it has no subgraph)."""
    return (node.domain in DEFAULT_DOMAINS and not node.op_type.startswith("Random")
            and all(n in constant for n in node.input if n))


def _graph_reads(graph: onnx.GraphProto) -> tuple[list[list[str]], list[bool]]:
    """Each node's reads (its inputs, then every name its subgraphs read, outer-scope reads included) and
    whether it has a subgraph: every node's attributes walked once."""
    reads, nested = [], []
    for node in graph.node:
        r = [n for n in node.input if n]
        subs = [g for _, g in subgraphs(node)]
        for g in subs:
            r.extend(_nested_reads(g))
        reads.append(r)
        nested.append(bool(subs))
    return reads, nested


def topological_order(graph: onnx.GraphProto, reads: list[list[str]] | None = None) -> list[int]:
    """Node indices in an order where every node comes after the nodes producing its inputs.

    Files need not list nodes so (keras2onnx does not; onnxruntime runs them anyway): depth and constant
    folding follow the data flow, never the file order. Ties keep file order; nodes on a cycle (invalid
    graphs) are appended in file order. reads: _graph_reads's, when the caller has them.
    """
    reads = _graph_reads(graph)[0] if reads is None else reads
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    deps = [{producer[n] for n in r if n in producer and producer[n] != i} for i, r in enumerate(reads)]
    if all(i > max(ds, default=-1) for i, ds in enumerate(deps)):
        return list(range(len(deps)))  # listed in order already: what the loop below returns then
    users: list[list[int]] = [[] for _ in graph.node]
    for i, ds in enumerate(deps):
        for d in ds:
            users[d].append(i)
    waiting = [len(ds) for ds in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    seen = set(order)
    return order + [i for i in range(len(graph.node)) if i not in seen]


def index_graph(graph: onnx.GraphProto) -> GraphIndex:
    """Build the lookup tables of graph (the main graph of a model)."""
    inits = {t.name: t for t in graph.initializer}
    producer, uses, constant = {}, Counter(), set(inits)
    reads, nested = _graph_reads(graph)
    for i in topological_order(graph, reads):
        node = graph.node[i]
        for out in node.output:
            producer[out] = i
        uses.update(reads[i])
        if not nested[i] and _folds_to_constant(node, constant):
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
        """The node as shown in a weight path, e.g. Transpose(perm=[1,0])."""
        if self.op_type == "Transpose":
            return f"Transpose(perm=[{','.join(map(str, self.perm))}])"
        if self.op_type == "Reshape":
            return f"Reshape(shape=[{','.join(map(str, self.out_shape))}])"
        if self.op_type == "Cast":
            return f"Cast(to={_dtype_name(self.out_dtype)})"
        return self.op_type


@dataclass(frozen=True, eq=False)
class Dequant:
    """A DequantizeLinear node on an integer weight: w = (q - zero_point) * scale, scale broadcast along axis."""

    node_index: int
    output: str
    scale: np.ndarray        # float64, broadcastable to the integer tensor
    zero_point: np.ndarray   # int64, same shape as scale
    axis: int | None         # per-channel axis of the integer tensor; None for per-tensor
    int_dtype: int
    out_dtype: int           # the float type DequantizeLinear produces

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """The float64 value of integer tensor q (exact: small integers times a float32/16 scale)."""
        return (q.astype(np.int64) - self.zero_point).astype(np.float64) * self.scale

    def quantize(self, w: np.ndarray) -> tuple[np.ndarray, int]:
        """Round w to the integer grid of the existing scale/zero point (half to even), clip; also count clipped."""
        info = np.iinfo(_np_dtype(self.int_dtype))
        safe = np.where(self.scale == 0, 1.0, self.scale)
        t = np.where(self.scale == 0, self.zero_point, np.round(w / safe) + self.zero_point)
        clipped = int(np.count_nonzero((t < info.min) | (t > info.max)))
        return np.clip(t, info.min, info.max).astype(_np_dtype(self.int_dtype)), clipped

    def describe(self) -> str:
        """The node as shown in a weight path, e.g. DequantizeLinear(INT8, axis=0)."""
        where = "per-tensor" if self.axis is None else f"axis={self.axis}"
        return f"DequantizeLinear({_dtype_name(self.int_dtype)}, {where})"


@dataclass(frozen=True)
class QuantStore:
    """What writing an edited weight back into its integer constant lost."""

    error: float    # ||W_requantised - W_edited||_F, float64, in the operator's layout
    clipped: int    # values that rounded outside the integer range and were clipped


@dataclass
class WeightRef:
    """Where an operator's weight comes from: a source constant and the chain of nodes up to the operator."""

    source: str                  # initializer name, or the output name of a Constant node
    constant_node: int | None    # index of that Constant node; None for an initializer
    chain: list[ChainStep]       # source side first (after the DequantizeLinear, if any)
    source_shape: tuple
    source_dtype: int
    exclusive: bool              # the source and every chain output feed only this path
    dequant: Dequant | None = None  # the DequantizeLinear between an integer source and the chain

    @property
    def shape(self) -> tuple:
        return self.chain[-1].out_shape if self.chain else self.source_shape

    @property
    def dtype(self) -> int:
        if self.chain:
            return self.chain[-1].out_dtype
        return self.dequant.out_dtype if self.dequant else self.source_dtype

    @property
    def consumed(self) -> str:
        """The tensor the operator reads directly."""
        if self.chain:
            return self.chain[-1].output
        return self.dequant.output if self.dequant else self.source

    def describe(self) -> str:
        """How the weight reaches the operator, operator side first, e.g. Transpose(perm=[1,0]) <- W."""
        src = f"Constant({self.source})" if self.constant_node is not None else self.source
        dq = [self.dequant.describe()] if self.dequant else []
        return " <- ".join([s.describe() for s in reversed(self.chain)] + dq + [src])


def _constant_tensor(node: onnx.NodeProto) -> "onnx.TensorProto | str":
    """The `value` tensor of a Constant node, or why the node's value is not an editable tensor."""
    for a in node.attribute:
        if a.name == "value":
            return a.t
    kinds = ", ".join(a.name for a in node.attribute) or "none"
    return f"weight is a Constant node with attribute {kinds}; only a `value` tensor is edited"


def const_array(gi: GraphIndex, name: str) -> np.ndarray | None:
    """The value of a small constant read directly from an initializer or a Constant node, else None."""
    if name in gi.inits:
        return numpy_helper.to_array(gi.inits[name])
    k = gi.producer.get(name)
    if k is not None and gi.graph.node[k].op_type == "Constant":
        t = _constant_tensor(gi.graph.node[k])
        return None if isinstance(t, str) else numpy_helper.to_array(t)
    return None


def _is_direct_constant(gi: GraphIndex, name: str) -> bool:
    """Whether name is an initializer or the output of a Constant node."""
    k = gi.producer.get(name)
    return name in gi.inits or (k is not None and gi.graph.node[k].op_type == "Constant")


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
        perm = tuple(int(p) for p in node_attr(node, "perm", list(range(len(in_shape)))[::-1]))
        if sorted(perm) != list(range(len(in_shape))):
            return f"Transpose node {label} has perm {list(perm)} for a rank-{len(in_shape)} weight"
        return ChainStep(k, "Transpose", out, in_shape, tuple(in_shape[p] for p in perm), in_dtype, perm)
    if node.op_type == "Reshape":
        shape = node_attr(node, "shape", None)
        if shape is None:
            value = const_array(gi, node.input[1]) if len(node.input) > 1 else None
            if value is None:
                return f"Reshape node {label} has a shape that is not a constant"
            shape = value.reshape(-1).tolist()
        dims = _reshape_dims(in_shape, list(shape), bool(node_attr(node, "allowzero", 0)))
        return dims if isinstance(dims, str) else ChainStep(k, "Reshape", out, in_shape, dims, in_dtype)
    if node.op_type == "Cast":
        to = int(node_attr(node, "to", 0))
        if to not in FLOAT_TYPES:
            return f"Cast node {label} casts the weight to {_dtype_name(to)}, not a float type"
        return ChainStep(k, "Cast", out, in_shape, in_shape, to)
    return ChainStep(k, node.op_type, out, in_shape, in_shape, in_dtype)


def _is_dequantize(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS and node.op_type == "DequantizeLinear"


def resolve_weight(gi: GraphIndex, name: str) -> "WeightRef | str":
    """Follow name back through chain nodes (and one DequantizeLinear) to its source constant, or say why not."""
    steps: list[int] = []  # operator side first
    dq: int | None = None
    while name not in gi.inits:
        k = gi.producer.get(name)
        if k is None or name not in gi.constant:
            return RUNTIME_WEIGHT
        node = gi.graph.node[k]
        if node.domain in DEFAULT_DOMAINS and node.op_type == "Constant":
            break
        if _is_dequantize(node):
            if not _is_direct_constant(gi, node.input[0]):
                return (f"the input of DequantizeLinear node {node_label(node, k)} is computed, not an integer "
                        "initializer; only a stored integer weight is requantised")
            dq, name = k, node.input[0]
            continue
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in CHAIN_OPS or not node.input:
            return (f"weight is computed from constants by {node.op_type} node {node_label(node, k)}; "
                    f"only {', '.join(CHAIN_OPS)} nodes (and a DequantizeLinear on an integer weight) "
                    "are followed back to the source")
        steps.append(k)
        name = node.input[0]
    return _build_ref(gi, name, steps[::-1], dq)


def _dequant(gi: GraphIndex, k: int, tensor: onnx.TensorProto) -> "Dequant | str":
    """Describe DequantizeLinear node k applied to integer tensor, or why it is not requantised."""
    node = gi.graph.node[k]
    label = node_label(node, k)
    if tensor.data_type not in QUANT_TYPES:
        return (f"DequantizeLinear node {label} reads a {_dtype_name(tensor.data_type)} weight; "
                "only int8/uint8/int16/uint16 weights are requantised")
    if int(node_attr(node, "block_size", 0)):
        return f"DequantizeLinear node {label} uses blocked quantisation, which is not supported"
    scale = const_array(gi, node.input[1]) if len(node.input) > 1 else None
    has_zp = len(node.input) > 2 and node.input[2]
    zp = const_array(gi, node.input[2]) if has_zp else np.zeros(np.shape(scale), np.int64)
    if scale is None or zp is None or zp.shape != scale.shape:
        return f"DequantizeLinear node {label} has a scale or zero point that is not a stored constant"
    rank = len(tensor.dims)
    axis = int(node_attr(node, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    if scale.size == 1:
        shape, axis = (1,) * rank, None
    elif scale.ndim == 1 and 0 <= axis < rank and scale.shape[0] == tensor.dims[axis]:
        shape = tuple(scale.shape[0] if i == axis else 1 for i in range(rank))
    else:
        return f"DequantizeLinear node {label} has a scale of shape {list(scale.shape)} for axis {axis}"
    out = int(node_attr(node, "output_dtype", 0)) or onnx.helper.np_dtype_to_tensor_dtype(scale.dtype)
    return Dequant(k, node.output[0], scale.astype(np.float64).reshape(shape),
                   zp.astype(np.int64).reshape(shape), axis, tensor.data_type, out)


def _build_ref(gi: GraphIndex, source: str, steps: list[int], dq: int | None = None) -> "WeightRef | str":
    """Propagate shape and dtype from the source constant through the DequantizeLinear and chain nodes."""
    const_node = None if source in gi.inits else gi.producer[source]
    tensor = gi.inits[source] if const_node is None else _constant_tensor(gi.graph.node[const_node])
    if isinstance(tensor, str):
        return tensor
    dequant = _dequant(gi, dq, tensor) if dq is not None else None
    if isinstance(dequant, str):
        return dequant
    if dequant is None and tensor.data_type not in FLOAT_TYPES:
        return f"weight dtype {_dtype_name(tensor.data_type)} is not a float type"
    source_shape = tuple(int(d) for d in tensor.dims)
    shape, dtype, chain = source_shape, dequant.out_dtype if dequant else tensor.data_type, []
    for k in steps:
        step = _chain_step(gi, k, shape, dtype)
        if isinstance(step, str):
            return step
        chain.append(step)
        shape, dtype = step.out_shape, step.out_dtype
    path = [source] + ([dequant.output] if dequant else []) + [s.output for s in chain]
    exclusive = all(gi.uses[t] == 1 for t in path)
    return WeightRef(source, const_node, chain, source_shape, tensor.data_type, exclusive, dequant)


def _source_tensor(gi: GraphIndex, ref: WeightRef) -> onnx.TensorProto:
    if ref.constant_node is None:
        return gi.inits[ref.source]
    return _constant_tensor(gi.graph.node[ref.constant_node])


def effective_weight(gi: GraphIndex, ref: WeightRef) -> np.ndarray:
    """The weight value exactly as the operator sees it (source constant pushed through the chain)."""
    value = numpy_helper.to_array(_source_tensor(gi, ref))
    if ref.dequant is not None:
        value = ref.dequant.dequantize(value).astype(_np_dtype(ref.dequant.out_dtype))
    for step in ref.chain:
        value = step.forward(value)
    return value


def store_weight(gi: GraphIndex, ref: WeightRef, value: np.ndarray) -> QuantStore | None:
    """Write an edited operator-side weight back to the source constant through the inverse chain.

    A quantised weight is requantised with its existing scale and zero point; what that loses is returned.
    """
    for step in reversed(ref.chain):
        value = step.inverse(value)
    tensor = _source_tensor(gi, ref)
    report = None
    if ref.dequant is not None:
        value64 = value.astype(np.float64)
        value, clipped = ref.dequant.quantize(value64)
        report = QuantStore(float(np.linalg.norm(ref.dequant.dequantize(value) - value64)), clipped)
    arr = np.ascontiguousarray(value.astype(_np_dtype(tensor.data_type), copy=False))
    if tensor.HasField("raw_data") and tuple(tensor.dims) == arr.shape and arr.dtype.byteorder in ("=", "<", "|"):
        tensor.ClearField("raw_data")  # replace the bytes in place: no second full copy of a large tensor
        tensor.raw_data = arr.tobytes()
    else:
        tensor.CopyFrom(numpy_helper.from_array(arr, tensor.name))
    return report


# ------------------------------------------------------------------------------------------ weight access
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
    """The value of the initializer called name."""
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


# ------------------------------------------------------------------------------------------ output bias
@dataclass
class BiasRef:
    """Where the per-output-channel bias of an operator lives: an initializer added to its output."""

    name: str        # the initializer holding the bias
    scale: float     # the operator's output moves by scale * (change of the initializer), Gemm's beta
    channels: int    # number of output channels (the bias holds one value per channel)
    output: str = ""  # the tensor the bias is added into (the operator's output, or the following Add's)


def output_bias(gi: GraphIndex, op: "EditableOp") -> "BiasRef | str":
    """The bias of op's output channels (Gemm C, Conv B, or a constant Add right after a MatMul), or why none.

    Only a float initializer read by this node alone, holding exactly one value per output channel, is
    accepted: the readout stage then changes its values, never the graph.
    """
    node = gi.graph.node[op.node_index]
    ad = adapter(op)
    channels = ad.output_channels(op)
    own = ad.bias_input(node)
    out = node.output[0]
    if own is not None:
        name, scale = own
    else:
        readers = [n for n in gi.graph.node if node.output[0] in n.input]
        if len(readers) != 1 or readers[0].op_type != "Add" or gi.uses[node.output[0]] != 1:
            return f"{op.node_name} (MatMul) is not followed by a single Add of a constant bias"
        name, scale = next((i for i in readers[0].input if i != node.output[0]), ""), 1.0
        out = readers[0].output[0]
    if not name:
        return f"{op.node_name} has no bias input (a bias cannot be added without changing the graph)"
    t = gi.inits.get(name)
    if t is None or t.data_type not in FLOAT_TYPES:
        return f"the bias {name!r} of {op.node_name} is not a float initializer"
    if gi.uses[name] != 1:
        return f"the bias {name!r} of {op.node_name} is shared with other nodes"
    dims = [int(d) for d in t.dims]
    if int(np.prod(dims)) != channels or (dims and dims[-1] != channels and not ad.spatial):
        return f"the bias {name!r} of {op.node_name} has shape {dims}, not one value per output channel ({channels})"
    if scale == 0.0:
        return f"{op.node_name} has beta = 0: its bias does not reach the output"
    return BiasRef(name, scale, channels, out)


def shift_bias(model: onnx.ModelProto, ref: BiasRef, delta: np.ndarray) -> None:
    """Add delta / scale to the bias initializer, so the operator's output channels move by delta."""
    b = read_initializer(model, ref.name)
    flat = b.astype(np.float64).reshape(-1) + np.asarray(delta, dtype=np.float64) / ref.scale
    write_initializer(model, ref.name, flat.reshape(b.shape))
