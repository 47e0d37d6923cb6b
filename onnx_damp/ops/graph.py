"""Finding editable operators in an ONNX graph, their input-feature layout, and why others are skipped.

An editable operator has a constant weight that acts linearly on one input feature axis:
Conv (weight [out, in/group, k...], feature axis 1 of the input; grouped and depthwise too),
Gemm (constant B, honouring transA/transB) and MatMul with a constant 2-D second input [in, out]
(feature axis last). How the weight reaches the operator (initializer or Constant node, chains of
Identity/Transpose/Reshape/Cast, a DequantizeLinear on an integer weight) is resolved in weights.py.
Each operator type's layout and weight views live in its adapter (ops/conv.py, gemm.py, matmul.py).
ConvTranspose, QOperator nodes (QLinearConv, ...), com.microsoft operators carrying a weight, and
operators inside control-flow subgraphs (If/Loop/Scan) and model-local functions are reported, not edited.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

import onnx

from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.registry import LINEAR_OPS, adapter
from onnx_damp.ops.weights import (DEFAULT_DOMAINS, RUNTIME_WEIGHT, GraphIndex, index_graph, node_label, resolve_weight,
                      subgraphs, topological_order)

MS_DOMAIN = "com.microsoft"
QOPERATOR_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
QUANT_ADVICE = "export a float model or a QDQ model (DequantizeLinear on the weights) instead"
UNSUPPORTED_OPS = {
    "ConvTranspose": "ConvTranspose is not supported (its weight [in, out/group, k...] is not edited)",
    **{op: f"QOperator {op} is not supported (its weight is integer inside the operator); {QUANT_ADVICE}"
       for op in QOPERATOR_OPS},
}
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
ML_DOMAIN = "ai.onnx.ml"
ML_MODEL_OPS = ("LinearClassifier", "LinearRegressor", "SVMClassifier", "SVMRegressor", "TreeEnsembleClassifier",
                "TreeEnsembleRegressor", "TreeEnsemble")
ML_REASON = "an ai.onnx.ml model operator: its coefficients are attributes, not a Conv/Gemm/MatMul weight"


@dataclass
class SkippedOp:
    """An operator that looks learnable but is not edited, with the reason."""

    node_name: str
    op_type: str
    reason: str
    scope: str = ""
    quantized_op: bool = False  # a QOperator or com.microsoft operator (a float or QDQ export would be editable)

    def to_dict(self) -> dict:
        """The operator as it appears under `not_editable` in the JSON outputs."""
        return {"node": self.node_name, "op_type": self.op_type, "scope": self.scope, "reason": self.reason}


@dataclass
class GraphScan:
    """The editable operators of a model in topological order, and the operators that are not edited."""

    editable: list[EditableOp] = field(default_factory=list)
    skipped: list[SkippedOp] = field(default_factory=list)
    index: GraphIndex | None = field(default=None, repr=False, compare=False)  # the scanned graph's, for reuse


# ------------------------------------------------------------------------------------------ readable names
def _name_scopes(node: onnx.NodeProto) -> list[str]:
    """The exporter's `pkg.torch.onnx.name_scopes` list of node, or [] when absent or malformed."""
    raw = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES), "")
    try:
        scopes = ast.literal_eval(raw) if raw else []
    except (ValueError, SyntaxError):
        return []
    return scopes if isinstance(scopes, list) and all(isinstance(s, str) for s in scopes) else []


def _parent(path: str) -> str:
    """The enclosing module path of a dotted module path ('' at the top level)."""
    return path.rsplit(".", 1)[0] if "." in path else ""


def node_scope(node: onnx.NodeProto, weight_source: str = "") -> str:
    """The module path of node from torch dynamo metadata ('' when unknown), e.g. "stage2.conv1".

    name_scopes is [root '', module paths..., the node's own fx name]: the scope is the innermost module.
    When an exporter rewrite fused the operator with a sibling module (BatchNorm folded into Conv), the
    metadata names that sibling; the weight's parameter name ("stage2.conv1.weight", or with a quantiser's
    suffix such as "_quantized") then names the owner.
    """
    modules = [s for s in _name_scopes(node)[:-1] if s]
    scope = modules[-1] if modules else ""
    match = re.fullmatch(r"(.+)\.weight(_\w+)?", weight_source)  # also "x.weight_quantized" (QDQ)
    owner = match.group(1) if match else ""
    if scope and owner and (owner == scope or _parent(owner) == _parent(scope)):
        return owner
    return scope


# ------------------------------------------------------------------------------------------------- scan
def scan_graph(model: onnx.ModelProto) -> GraphScan:
    """List the editable operators of the main graph in topological order, and the skipped ones."""
    graph = model.graph
    gi = index_graph(graph)
    scan = GraphScan(index=gi)
    for i in topological_order(graph):
        node = graph.node[i]
        label = node_label(node, i)
        for attr, g in subgraphs(node):
            scan.skipped += _nested_skips(g, f"{label}/{attr}", f"the {attr} subgraph of {node.op_type} node {label}")
        reason = _unsupported(node, gi)
        if reason:
            quant = node.op_type in QOPERATOR_OPS or node.domain == MS_DOMAIN
            scan.skipped.append(SkippedOp(label, node.op_type, reason, node_scope(node), quant))
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in LINEAR_OPS:
            continue
        op = _editable(node, i, label, gi)
        if isinstance(op, str):
            scan.skipped.append(SkippedOp(label, node.op_type, op, node_scope(node)))
        else:
            scan.editable.append(op)
    for fn in model.functions:
        scan.skipped += _nested_skips(fn, f"{fn.domain}:{fn.name}", f"model-local function {fn.domain}:{fn.name}")
    n = len(scan.editable)
    for k, op in enumerate(scan.editable):
        op.depth_index = k
        op.depth = k / (n - 1) if n > 1 else 1.0
    return scan


def _unsupported(node: onnx.NodeProto, gi: GraphIndex) -> str:
    """Why node is a weight operator that is never edited (ConvTranspose, QOperator, com.microsoft), or ''."""
    if node.domain in DEFAULT_DOMAINS:
        return UNSUPPORTED_OPS.get(node.op_type, "")
    if node.domain == ML_DOMAIN and node.op_type in ML_MODEL_OPS:
        return ML_REASON
    if node.domain != MS_DOMAIN:
        return ""
    weights = [n for n in node.input if n and _constant_rank(gi, n) >= 2]
    if not weights:
        return ""
    return (f"com.microsoft {node.op_type} (weight {weights[0]}) is not supported: onnxruntime contrib "
            f"operators are not edited; {QUANT_ADVICE}")


def _constant_rank(gi: GraphIndex, name: str) -> int:
    """Rank of the stored constant behind a constant tensor (followed through first inputs); 0 if none."""
    for _ in range(16):
        if name not in gi.constant:
            return 0
        if name in gi.inits:
            return len(gi.inits[name].dims)
        k = gi.producer.get(name)
        node = gi.graph.node[k] if k is not None else None
        if node is not None and node.op_type == "Constant":
            return next((len(a.t.dims) for a in node.attribute if a.name == "value"), 0)
        if node is None or not node.input:
            return 0
        name = node.input[0]
    return 0


def no_editable_message(scan: GraphScan) -> str:
    """The one-line user error for a model without an editable operator, naming unsupported quantised ops."""
    msg = "the model has no editable operator (Conv, Gemm or MatMul with a constant weight)"
    ml = sorted({s.op_type for s in scan.skipped if s.reason == ML_REASON})
    if ml:
        msg += (f"; it holds {', '.join(ml)} from the ai.onnx.ml domain (a classical-ML model, e.g. converted from "
                "scikit-learn), which DAMP does not edit: it needs Conv/Gemm/MatMul layers")
    quant = [s for s in scan.skipped if s.quantized_op]
    if quant:
        kinds = ", ".join(sorted({s.op_type for s in quant}))
        msg += (f"; {len(quant)} of its operators are QOperator/com.microsoft operators ({kinds}), which are "
                "not supported: export a float model, or a QDQ model (DequantizeLinear on the weights)")
    return msg


def _nested_skips(body: "onnx.GraphProto | onnx.FunctionProto", prefix: str, where: str) -> list[SkippedOp]:
    """Skip records for every weight operator inside a subgraph or function body, recursively."""
    out = []
    for i, node in enumerate(body.node):
        label = f"{prefix}/{node_label(node, i)}"
        if node.domain in DEFAULT_DOMAINS and (node.op_type in LINEAR_OPS or node.op_type in UNSUPPORTED_OPS):
            out.append(SkippedOp(label, node.op_type, f"inside {where}: operators in control-flow subgraphs "
                                                      "and model-local functions are not edited", node_scope(node)))
        for attr, g in subgraphs(node):
            out += _nested_skips(g, f"{label}/{attr}", where)
    return out


def _editable(node: onnx.NodeProto, index: int, label: str, gi: GraphIndex) -> "EditableOp | str":
    """Describe node as an EditableOp, or return why it cannot be edited."""
    if len(node.input) < 2 or not node.input[1]:
        return "missing weight input"
    x_name, w_name = node.input[0], node.input[1]
    pre = adapter(node.op_type).precheck(node, gi.constant)
    if pre:
        return pre
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
        op.scope = node_scope(node, ref.source)
    return op


def _layout(node: onnx.NodeProto, index: int, label: str, x_name: str, w_name: str,
            shape: tuple) -> "EditableOp | str":
    """The input-feature layout of an editable node whose weight (as it sees it) has the given shape."""
    return adapter(node.op_type).layout(node, index, label, x_name, w_name, shape)
