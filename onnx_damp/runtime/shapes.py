"""Static tensor shapes from onnx shape inference, without copying a model's weights."""
from __future__ import annotations

import onnx
from onnx import helper


def inferred_dims(model: onnx.ModelProto) -> dict[str, list]:
    """The dims of every tensor shape inference can type (value infos, inputs, outputs), by name: an int
    size, a symbolic name, or None. Empty when the graph cannot be inferred.

    Inference runs on the graph with its large initializers declared as inputs, so no weight is copied."""
    g = model.graph
    small = [t for t in g.initializer if t.ByteSize() <= 4096]
    declared = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
                if t.ByteSize() > 4096]
    lite = helper.make_model(helper.make_graph(list(g.node), g.name or "g", list(g.input) + declared,
                                               list(g.output), small, value_info=list(g.value_info)),
                             opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             functions=list(model.functions))
    try:
        inferred = onnx.shape_inference.infer_shapes(lite, strict_mode=False, data_prop=True).graph
    except Exception:  # not inferable: nothing known
        return {}
    out = {}
    for vi in list(inferred.value_info) + list(inferred.input) + list(inferred.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in vi.type.tensor_type.shape.dim]
    return out
