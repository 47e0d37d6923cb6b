"""Running a model whose batch is fixed at 1 at full batch size: a copy with a symbolic batch dimension.

Many exported models fix the batch at 1 (CNTK, tflite2onnx, keras2onnx, TorchScript without dynamic axes).
Fed one image at a time they run 10-50x slower than at batch 256. For the tool's own sessions (statistics,
predictions, token probes) the batch dimension is made symbolic: the data input's and the outputs' first
dimension become "N", value_info is dropped, and each constant Reshape target whose first entry is 1 gets
-1 (or 0, "copy the input's batch", when it already holds a -1). The rewrite is trusted only after a check
on the data: the copy's outputs on the first rows as one batch must equal the original's run one row at a
time. The edited model keeps the original's fixed batch: only weight values are ever written.
"""
from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_damp.runtime.modelio import data_input

PROBE_ROWS = 3
_VERDICTS: dict[str, "bool | str"] = {}  # graph fingerprint -> True, or why the rewrite does not hold


def fixed_batch_of(model: onnx.ModelProto, input_name: str | None = None) -> int | None:
    """The data input's fixed first dimension (None when symbolic or absent)."""
    inp = data_input(model, input_name)
    if inp is None or not inp.type.tensor_type.shape.dim:
        return None
    d = inp.type.tensor_type.shape.dim[0]
    return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None


def free_batch(model: onnx.ModelProto, input_name: str | None = None) -> onnx.ModelProto:
    """A copy of model (batch fixed at 1) with a symbolic batch dimension; see the module docstring."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    target = data_input(out, input_name)
    for vi in [target] + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].Clear()
            dims[0].dim_param = "N"
    del g.value_info[:]
    inits = {t.name: t for t in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant" and n.output}
    done: set[str] = set()
    for node in g.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in done:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        name = node.input[1]
        if name in inits:
            t = inits[name]
        elif name in consts:
            t = next((a.t for a in consts[name].attribute if a.name == "value"), None)
        else:
            continue
        if t is None:
            continue
        shape = numpy_helper.to_array(t).astype(np.int64)
        if shape.ndim != 1 or len(shape) == 0 or shape[0] != 1:
            continue
        if -1 in shape[1:] and allowzero:
            continue
        shape = shape.copy()
        shape[0] = 0 if -1 in shape[1:] else -1
        t.CopyFrom(numpy_helper.from_array(shape, t.name))
        done.add(name)
    return out


def fingerprint(model: onnx.ModelProto) -> str:
    """The graph without its initializer values: an edit (weights only) keeps it."""
    h = hashlib.sha256()
    for part in (model.graph.input, model.graph.output, model.graph.node):
        for item in part:
            h.update(item.SerializeToString())
    for t in model.graph.initializer:  # names, shapes and small integer constants (Reshape targets) count
        h.update(t.name.encode())
        h.update(str(list(t.dims)).encode())
        if t.data_type == onnx.TensorProto.INT64 and np.prod(t.dims) <= 16:
            h.update(t.SerializeToString())
    return h.hexdigest()


def free_batch_verdict(model: onnx.ModelProto, x, input_name: str | None = None,
                       device: str = "cpu") -> "bool | str | None":
    """None when model's batch is not fixed at 1; True when its symbolic-batch copy checks out on the first
    rows of x (cached per graph); else why not."""
    if fixed_batch_of(model, input_name) != 1:
        return None
    key = fingerprint(model)
    verdict = _VERDICTS.get(key)
    if verdict is None:
        verdict = _check(model, x, input_name, device)
        if verdict is True or "changes the outputs" in verdict:  # a failure to run may be the data's fault
            _VERDICTS[key] = verdict
    return verdict


def batch_free_model(model: onnx.ModelProto, x, input_name: str | None = None,
                     device: str = "cpu") -> "tuple[onnx.ModelProto | None, str]":
    """(the copy with a symbolic batch, '') when model fixes its batch at 1 and the copy checks out on the
    first rows of x; (None, why) otherwise (None, '' when the batch is not fixed at 1)."""
    verdict = free_batch_verdict(model, x, input_name, device)
    if verdict is True:
        return free_batch(model, input_name), ""
    return None, verdict or ""


def _check(model: onnx.ModelProto, x, input_name, device) -> "bool | str":
    from onnx_damp.errors import DampError
    from onnx_damp.runtime.session import input_spec, make_session

    n = min(PROBE_ROWS, len(x))
    if n < 2:
        return "too few rows to check a symbolic batch"
    try:
        sess = make_session(model, device)
        spec = input_spec(sess, input_name)
        rows = np.asarray(x[:n]).astype(spec.dtype)
        one = [sess.run(None, {spec.name: rows[i:i + 1]}) for i in range(n)]
        free = make_session(free_batch(model, input_name), device, quiet=True)  # a failed run is an answer here
        many = free.run(None, {spec.name: rows})
    except DampError as exc:
        return f"a symbolic batch does not load: {exc}"
    except Exception as exc:  # onnxruntime refuses the batch inside the graph: the rewrite does not hold
        return f"a symbolic batch does not run ({str(exc).strip().splitlines()[0] if str(exc).strip() else exc})"
    for k, out in enumerate(many):
        ref = np.concatenate([np.asarray(o[k]) for o in one])
        if np.asarray(out).shape != ref.shape or not np.allclose(out, ref, rtol=1e-4, atol=1e-5):
            return "a symbolic batch changes the outputs (the graph mixes rows of a batch)"
    return True
