"""Find the token layout of transformer-style operator inputs by running the model, not by trusting shapes.

Exporters lay token sequences out as [N, T, D], [T, N, D] or flattened [T*N, D] / [N*T, D] (see the
method notes: nn.MultiheadAttention's out-projection Gemm reads [T*N, D] rows token by token). A
probe runs the model on batches of 2 and 3 images: the axis (or row count) that grows by one
image's worth is the batch; for flattened rows, changing only the second image shows which rows
belong to it (batch-major: one contiguous block; token-major: every other row).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.registry import adapter


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens of one tapped activation are: a tensor axis, or the order of flattened rows."""

    kind: str          # "axis" (3-D, tokens on `axis`), "batch_major" ([N*T, D]) or "token_major" ([T*N, D])
    tokens: int        # T
    axis: int = -1     # token axis for kind == "axis"

    def describe(self) -> str:
        if self.kind == "axis":
            return f"{self.tokens} tokens on axis {self.axis}"
        return f"{self.tokens} tokens, rows {self.kind.replace('_', '-')}"


def _probe_model(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of model that also outputs each named activation, cast to float32."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for k, name in enumerate(names):
        cast = f"__damp_probe{k}"
        out.graph.node.append(helper.make_node("Cast", [name], [cast], name=cast + "_node", to=TensorProto.FLOAT))
        out.graph.output.append(helper.make_tensor_value_info(cast, TensorProto.FLOAT, None))
    return out


def _layout_from_runs(a2: np.ndarray, b2: np.ndarray, a3: np.ndarray) -> TokenLayout | None:
    """Token layout from the activation for batches [x0, x1], [x0, x1'] and [x0, x1, x2] (feature axis last)."""
    if a2.ndim == 3 and a3.ndim == 3:
        grown = [i for i in range(2) if a2.shape[i] == 2 and a3.shape[i] == 3]
        if len(grown) != 1:
            return None
        tok = 1 - grown[0]
        return TokenLayout("axis", int(a2.shape[tok]), tok) if a2.shape[tok] > 1 else None
    if a2.ndim != 2 or a3.ndim != 2:
        return None
    t = a3.shape[0] - a2.shape[0]
    if t <= 1 or a2.shape[0] != 2 * t:
        return None
    changed = np.flatnonzero(np.any(a2 != b2, axis=1))
    if changed.size == 0:
        return None
    if changed.min() >= t:
        return TokenLayout("batch_major", int(t))
    if np.all(changed % 2 == 1):
        return TokenLayout("token_major", int(t))
    return None


def _layout_from_one(a: np.ndarray) -> TokenLayout | None:
    """Token layout from the activation of a batch of exactly one image (a batch fixed at 1): the axis of
    size 1 is the batch; flattened rows of one image are its tokens (batch- and token-major coincide)."""
    if a.ndim == 3:
        ones = [i for i in range(2) if a.shape[i] == 1]
        if len(ones) != 1:
            return None
        tok = 1 - ones[0]
        return TokenLayout("axis", int(a.shape[tok]), tok)
    if a.ndim == 2 and a.shape[0] > 1:
        return TokenLayout("batch_major", int(a.shape[0]))
    return None


def probe_token_layouts(model: onnx.ModelProto, ops: list[EditableOp], x: np.ndarray, input_name: str | None,
                        device: str = "cpu") -> dict[str, TokenLayout]:
    """Token layout of every MatMul/Gemm input that carries a token axis, by node name.

    x: the data (the first three samples are used). A batch fixed at 1 is probed with one image
    (_layout_from_one); a batch fixed at another size gets no layouts (token_probe_note says so).
    """
    cands = [op for op in ops if adapter(op).token_candidate(op)]
    names = list(dict.fromkeys(op.input_name for op in cands))
    if names:
        rows = batch_rows(model, names, input_name)  # one shape inference (it was one per name)
        names = [n for n in names if n not in rows]
        cands = [op for op in cands if op.input_name in names]
    if not names or len(x) < 3:
        return {}
    spec, run = _probe_session(model, names, input_name, device)
    if spec.fixed_batch == 1:
        r1 = run(x[:1].astype(spec.dtype))
        found = {name: _layout_from_one(r1[name]) for name in names}
        return {op.node_name: found[op.input_name] for op in cands if found[op.input_name] is not None}
    if spec.fixed_batch is not None:
        return {}
    x = x[:3].astype(spec.dtype)
    r2, r2b, r3 = run(x[[0, 1]]), run(x[[0, 2]]), run(x[[0, 1, 2]])
    found = {name: _layout_from_runs(r2[name], r2b[name], r3[name]) for name in names}
    return {op.node_name: found[op.input_name] for op in cands if found[op.input_name] is not None}


def probed_one_row(model: onnx.ModelProto, names: list[str], x: np.ndarray, input_name: str | None = None,
                   device: str = "cpu") -> set[str]:
    """The names among names that are [batch, d] when the model runs (2-D, with 2 rows for 2 images and 3 for 3):
    for inputs shape inference leaves open (a Reshape to [-1, d] gives an unknown first dim, which could as well
    be tokens flattened). A batch fixed by the model, or fewer than 3 samples: none."""
    if not names or len(x) < 3:
        return set()
    spec, run = _probe_session(model, names, input_name, device)
    if spec.fixed_batch is not None:
        return set()
    x3 = x[:3].astype(spec.dtype)
    a2, a3 = run(x3[:2]), run(x3)
    return {n for n in names if a2[n].ndim == a3[n].ndim == 2 and a2[n].shape[0] == 2 and a3[n].shape[0] == 3}


def _probe_session(model: onnx.ModelProto, names: list[str], input_name: str | None, device: str):
    """(the data input's spec, run): run(batch) gives each named activation of model on batch, by name, from one
    session of _probe_model (no graph optimisation: nothing removes a probed tensor, and on three images optimising
    costs more than it saves: 37 -> 22 ms on the ViT samples)."""
    from onnx_damp.runtime.session import input_spec, make_session

    sess = make_session(_probe_model(model, names), device, optimization="none")
    spec = input_spec(sess, input_name)
    fetch = [f"__damp_probe{k}" for k in range(len(names))]
    return spec, lambda batch: dict(zip(names, sess.run(fetch, {spec.name: batch})))


def batch_rows(model: onnx.ModelProto, names: list[str], input_name: str | None = None) -> set[str]:
    """The names among names that shape inference shows to be [batch, d], one row per sample: the first dim
    is the data input's symbolic batch (or 1 with a batch fixed at 1). They carry no token axis, so they
    need no probe."""
    from onnx_damp.runtime.shapes import inferred_dims

    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights and input_name in (None, i.name)]
    dims = inferred_dims(model) if inputs else {}
    batch = dims.get(inputs[0].name, [None])[:1] if inputs else [None]
    if not batch or batch[0] in (None, 0) or (isinstance(batch[0], int) and batch[0] != 1):
        return set()
    return {n for n in names if len(dims.get(n, [])) == 2 and dims[n][0] == batch[0]}


def token_probe_note(model: onnx.ModelProto, ops: list[EditableOp], input_name: str | None,
                     feature_mode: str) -> str | None:
    """Why token layouts could not be probed (a batch fixed at a size other than 1 with token-sequence
    operators), or None: without layouts their inputs are read row by row, not by the class token."""
    from onnx_damp.runtime.batching import fixed_batch_of
    from onnx_damp.runtime.instrument import TOKEN_MODES  # instrument imports this module

    n = fixed_batch_of(model, input_name)
    if feature_mode not in TOKEN_MODES or n in (None, 1):
        return None
    cands = [op for op in ops if adapter(op).token_candidate(op)]
    if not cands:
        return None
    from onnx_damp.runtime.shapes import inferred_dims

    dims = inferred_dims(model)  # empty when not inferable: no claim either way
    seq = [op.node_name for op in cands if len(dims.get(op.input_name, [])) == 3]
    if not seq:
        return None
    return (f"the model's batch is fixed at {n}: the token layout of {len(seq)} token-sequence operator(s) "
            f"({', '.join(seq[:3])}{', ...' if len(seq) > 3 else ''}) cannot be probed, so their inputs are read "
            "row by row, not by the class token (transformers forget less this way); export the model with a "
            "dynamic batch axis, or batch 1")
