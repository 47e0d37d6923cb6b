"""Tiny ONNX models built with onnx.helper (opset and IR version pinned) for graph tests."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def make_model(nodes, inputs, outputs, inits, opset: int = OPSET, domains: dict | None = None) -> onnx.ModelProto:
    """A checked model of nodes; domains adds opset imports for other domains, e.g. {"com.microsoft": 1}."""
    graph = helper.make_graph(nodes, "tiny", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def conv_model(rng, cin=3, cout=4, k=3, classes=3) -> tuple[onnx.ModelProto, dict]:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm(transB=1): a tiny CNN classifier."""
    w = rng.normal(size=(cout, cin, k, k)).astype(np.float32)
    b = rng.normal(size=cout).astype(np.float32)
    fc = rng.normal(size=(classes, cout)).astype(np.float32)
    fb = rng.normal(size=classes).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], name="head", transB=1)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", cin, 6, 6])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                       {"w": w, "b": b, "fc": fc, "fb": fb})
    return model, {"w": w, "b": b, "fc": fc, "fb": fb}


def gemm_model(rng, d=5, out=3, trans_b=0, trans_a=0) -> tuple[onnx.ModelProto, np.ndarray]:
    """A single Gemm; x is [N, d] (or [d, N] with transA)."""
    w = rng.normal(size=(out, d) if trans_b else (d, out)).astype(np.float32)
    b = rng.normal(size=out).astype(np.float32)
    shape = [d, "N"] if trans_a else ["N", d]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transA=trans_a, transB=trans_b)]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out])], {"w": w, "b": b})
    return model, w


def matmul_model(rng, d=5, out=3, tokens=4) -> tuple[onnx.ModelProto, np.ndarray]:
    """MatMul of a 3-D activation [N, tokens, d] with a constant [d, out] weight, then a bias Add."""
    w = rng.normal(size=(d, out)).astype(np.float32)
    b = rng.normal(size=out).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="matmul"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, d])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", tokens, out])],
                       {"w": w, "b": b})
    return model, w


def no_weight_model() -> onnx.ModelProto:
    """A classifier with nothing to edit: softmax of its input."""
    nodes = [helper.make_node("Softmax", ["x"], ["y"], name="softmax", axis=1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], {})
