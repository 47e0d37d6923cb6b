"""Per-sample pooled features of every editable operator's input, for the verification metrics.

A copy of the graph gets, for each editable operator's input activation, a few nodes that move the
feature axis last (Conv: axis 1; Gemm: axis 1 of A, axis 0 with transA; MatMul: last axis), reshape to
rows [-1, d], cast to float32 and average the rows (ReduceMean over axis 0) into one vector [d]. Samples are
fed one at a time (a model with a fixed batch size gets that many copies of the same sample), so every
row of every tensor belongs to that sample and the batch axis inside the graph never has to be found.
The session uses basic graph optimisations only, so no fusion swallows a tapped activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_damp.data.dataset import Dataset, check_against_input
from onnx_damp.errors import DampError
from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.registry import adapter
from onnx_damp.runtime.batching import batch_free_model
from onnx_damp.runtime.instrument import default_opset, tap_key
from onnx_damp.runtime.session import input_spec, make_session, output_name, run_checked
from onnx_damp.runtime.tokens import probe_token_layouts


def feature_model(model: onnx.ModelProto, ops: Sequence[EditableOp],
                  class_token_ops: frozenset = frozenset()) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of model that also outputs the pooled input features of each op (one output name per op).

    Ops in class_token_ops (token-sequence inputs, see tokens.py) output their first row instead of the
    mean: with one sample per run, row 0 is that sample's token 0 (the class token) in every layout.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    opset = default_opset(model)
    by_key: dict[str, str] = {}
    names = []
    for op in ops:
        cls = op.node_name in class_token_ops
        key = tap_key(op) + ("|cls" if cls else "")
        if key not in by_key:
            by_key[key] = _add_pool(g, op, len(by_key), opset, cls)
        names.append(by_key[key])
    return out, names


def _add_pool(g: onnx.GraphProto, op: EditableOp, k: int, opset: int, class_token: bool = False) -> str:
    p = f"__damp_feat{k}_"
    x = op.input_name
    nodes, x = adapter(op).features_last(op, x, p)
    g.initializer.append(numpy_helper.from_array(np.array([-1, op.feature_dim], dtype=np.int64), p + "shape"))
    nodes.append(helper.make_node("Reshape", [x, p + "shape"], [p + "rows"]))
    nodes.append(helper.make_node("Cast", [p + "rows"], [p + "rows32"], to=TensorProto.FLOAT))
    if class_token:
        g.initializer.append(numpy_helper.from_array(np.array(0, dtype=np.int64), p + "row0"))
        nodes.append(helper.make_node("Gather", [p + "rows32", p + "row0"], [p + "mean"], axis=0))
    elif opset >= 18:
        g.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), p + "axes"))
        nodes.append(helper.make_node("ReduceMean", [p + "rows32", p + "axes"], [p + "mean"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMean", [p + "rows32"], [p + "mean"], axes=[0], keepdims=0))
    for n in nodes:
        n.name = n.output[0] + "_node"
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(p + "mean", TensorProto.FLOAT, [op.feature_dim]))
    return p + "mean"


@dataclass
class PooledFeatures:
    """layers[i]: [n, d_i] pooled input features of editable operator i; logits: [n, classes]."""

    layers: list[np.ndarray]
    logits: np.ndarray


def extract(model: onnx.ModelProto, ops: Sequence[EditableOp], data: Dataset, indices: np.ndarray,
            device: str = "cpu", input_name: str | None = None, output: str | None = None,
            progress: Callable[[int], None] | None = None) -> PooledFeatures:
    """Run the samples data.x[indices] one at a time and return their pooled features and output rows."""
    free, _ = batch_free_model(model, data.x, input_name, device)  # token layouts need a free batch to probe
    layouts = probe_token_layouts(free if free is not None else model, list(ops), data.x, input_name, device)
    inst, names = feature_model(model, ops, frozenset(layouts))
    sess = make_session(inst, device, optimization="basic")
    spec = input_spec(sess, input_name)
    x = check_against_input(data, spec.shape, spec.dtype, spec.name)
    unique = list(dict.fromkeys(names))
    out_name = output_name(sess, output, skip=set(unique))
    fetch = unique + [out_name]
    reps = spec.fixed_batch or 1
    cols: dict[str, list] = {n: [] for n in unique}
    logits = []
    for i in np.asarray(indices, dtype=np.int64):
        batch = np.repeat(x[i:i + 1], reps, axis=0)
        outs = run_checked(sess, fetch, {spec.name: batch})
        for n, v in zip(unique, outs[:-1]):
            cols[n].append(np.asarray(v, dtype=np.float32).reshape(-1))
        z = np.asarray(outs[-1])
        if z.ndim != 2 or z.shape[0] != reps:
            raise DampError(f"output {out_name!r} has shape {list(z.shape)} for a batch of {reps}; "
                            "expected [batch, classes] (pick the logits with --output-name)")
        logits.append(z[0].astype(np.float64))
        if progress:
            progress(1)
    d = {n: (np.stack(v) if v else np.zeros((0, 0), np.float32)) for n, v in cols.items()}
    return PooledFeatures([d[n] for n in names], np.stack(logits) if logits else np.zeros((0, 0)))


def pick_samples(y: np.ndarray, classes: Sequence[int], limit: int, seed: int = 0) -> np.ndarray:
    """Up to limit sample indices of the given classes, spread evenly over them, in ascending order.

    Deterministic (seeded); all samples of the classes when there are at most limit.
    """
    rng = np.random.default_rng(seed)
    pools = [np.flatnonzero(y == c) for c in classes]
    pools = [p for p in pools if len(p)]
    if limit <= 0 or not pools:
        return np.zeros(0, dtype=np.int64)
    if sum(len(p) for p in pools) <= limit:
        return np.sort(np.concatenate(pools))
    # water-filling: an equal share per class, the leftovers of small classes to the others
    take = [0] * len(pools)
    left = limit
    open_ = list(range(len(pools)))
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for j in list(open_):
            add = min(share, len(pools[j]) - take[j], left)
            take[j] += add
            left -= add
            if take[j] == len(pools[j]):
                open_.remove(j)
            if left == 0:
                break
    picked = [rng.choice(p, size=t, replace=False) for p, t in zip(pools, take) if t]
    return np.sort(np.concatenate(picked))
