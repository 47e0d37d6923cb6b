"""onnxruntime sessions (imported lazily so the CLI starts fast) and batched prediction."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import numpy as np
import onnx

from onnx_damp.errors import DampError
from onnx_damp.runtime.modelio import fits_in_proto, is_repeated_field, tensor_nbytes

DEVICES = ("cpu", "cuda")
INTRA_OP_THREADS: int | None = None  # set by a Ray task to the CPUs it was given (None: onnxruntime's default)


LARGE_TENSOR = 1 << 20       # in the array path, initializers of this many bytes or more go to ORT as arrays
SERIALISE_LIMIT = 256 << 20  # models whose initializers hold more bytes than this take the array path
# sessions of models with more bytes than this in large tensors (LARGE_TENSOR and up) get those as arrays even
# when the model could be serialised: serialising is the larger cost (resnet18 sample, 45 MB: session
# 0.19-0.39 s whole, 0.10-0.27 s as arrays)
ARRAY_SESSION_BYTES = 16 << 20


def serialise_whole(model: onnx.ModelProto) -> bool:
    """Whether a session may get model as one serialised string: small weights and under protobuf's limit.

    Larger models (typically loaded with external data) take the array path instead, so their weights are
    never copied into one big bytes object.
    """
    return sum(tensor_nbytes(t) for t in model.graph.initializer) <= SERIALISE_LIMIT and fits_in_proto(model)


def _goes_as_array(t: onnx.TensorProto, threshold: int) -> bool:
    """Whether split_large_initializers hands t to onnxruntime as an array: in-proto, not strings (onnxruntime
    takes no string arrays as initializers), threshold bytes or more."""
    return (t.data_location != onnx.TensorProto.EXTERNAL and t.data_type != onnx.TensorProto.STRING
            and tensor_nbytes(t) >= threshold)


def _array_bytes(model: onnx.ModelProto) -> int:
    """Bytes in the initializers split_large_initializers would hand over as arrays."""
    return sum(tensor_nbytes(t) for t in model.graph.initializer if _goes_as_array(t, LARGE_TENSOR))


def split_large_initializers(model: onnx.ModelProto,
                             threshold: int | None = None) -> tuple[onnx.ModelProto, list[str], list[np.ndarray]]:
    """A copy of model whose large initializers are external-data stubs, plus their names and values.

    onnxruntime takes the values through SessionOptions.add_external_initializers, so a model above
    protobuf's 2 GiB limit runs without being serialised whole or written to disk, and the caller's
    proto is left untouched (onnx.save with external data would rewrite it in place). Only the small
    part of the model is copied; each large value is read once as an array.
    """
    from onnx import numpy_helper

    threshold = LARGE_TENSOR if threshold is None else threshold
    light = onnx.ModelProto()
    _copy_fields(model, light, skip=("graph",))
    _copy_fields(model.graph, light.graph, skip=("initializer",))
    names, values = [], []
    for t in model.graph.initializer:
        if not _goes_as_array(t, threshold):
            light.graph.initializer.add().CopyFrom(t)
            continue
        value = numpy_helper.to_array(t)
        stub = light.graph.initializer.add()
        stub.name, stub.data_type = t.name, t.data_type
        stub.dims.extend(t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, val in (("location", "onnx-damp-in-memory"), ("offset", "0"), ("length", str(value.nbytes))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, val
        names.append(t.name)
        values.append(value)
    return light, names, values


def _copy_fields(src, dst, skip=()) -> None:
    """Copy every set field of protobuf message src into dst, except those named in skip."""
    for fd, value in src.ListFields():
        if fd.name in skip:
            continue
        if is_repeated_field(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DampError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")


OPTIMIZATIONS = ("all", "basic", "none")  # make_session's graph optimisation levels


def make_session(model: onnx.ModelProto, device: str = "cpu", optimization: str = "all", quiet: bool = False):
    """Create an InferenceSession from an in-memory model, failing clearly if CUDA fell back to CPU.
    optimization: onnxruntime's graph optimisations, "all", "basic" (constant folding, redundant-node removal:
    never a fusion that could merge a tapped activation into a fused kernel) or "none" (a probe run on a few
    images, for which optimising costs more than it saves).
    quiet: onnxruntime logs only fatal errors (a probe whose failure is an expected answer, not an error)."""
    import onnxruntime as ort

    if optimization not in OPTIMIZATIONS:
        raise ValueError(f"unknown graph optimisation {optimization!r} (one of {', '.join(OPTIMIZATIONS)})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 4 if quiet else 3
    if INTRA_OP_THREADS:
        opts.intra_op_num_threads = INTRA_OP_THREADS
    if optimization != "all":
        opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                         "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[optimization]
    providers = providers_for(device)
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DampError("--device cuda: this onnxruntime has no CUDA execution provider (install "
                        "onnx-damp[gpu], which brings onnxruntime-gpu, and uninstall the CPU-only onnxruntime)")
    model = expose_zipmap_inputs(model)
    try:
        if _array_bytes(model) <= ARRAY_SESSION_BYTES and serialise_whole(model):
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=providers)
        else:
            light, names, values = split_large_initializers(model)
            opts.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(v) for v in values])
            sess = ort.InferenceSession(light.SerializeToString(), opts, providers=providers)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DampError(f"onnxruntime cannot load the model: {msg}") from None
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise DampError(f"--device cuda: onnxruntime fell back to CPU (the CUDA provider failed to initialise: "
                        f"check that a GPU is visible and the CUDA/cuDNN libraries onnxruntime {ort.__version__} "
                        f"needs are installed)")
    return sess


@dataclass
class InputSpec:
    name: str
    shape: list
    dtype: np.dtype

    @property
    def fixed_batch(self) -> int | None:
        d = self.shape[0] if self.shape else None
        return d if isinstance(d, int) and d > 0 else None


_ORT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8,
              "tensor(int8)": np.int8}


def input_spec(sess, input_name: str | None = None) -> InputSpec:
    """The (single) data input of a session; --input-name picks one when there are several."""
    inputs = sess.get_inputs()
    if input_name is not None:
        match = [i for i in inputs if i.name == input_name]
        if not match:
            raise DampError(f"model has no input {input_name!r}; inputs: {[i.name for i in inputs]}")
        inp = match[0]
    elif len(inputs) != 1:
        raise DampError(f"model has {len(inputs)} inputs {[i.name for i in inputs]}; pick one with --input-name")
    else:
        inp = inputs[0]
    dtype = _ORT_TYPES.get(inp.type)
    if dtype is None:
        raise DampError(f"model input {inp.name!r} has unsupported type {inp.type}")
    shape = [d if isinstance(d, int) else None for d in inp.shape]
    return InputSpec(inp.name, shape, np.dtype(dtype))


def expose_zipmap_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """model, or a copy whose graph also outputs the tensor each output ZipMap reads (the tool's sessions only).

    scikit-learn exports (skl2onnx) end in ZipMap: a sequence of maps onnxruntime returns as Python dicts.
    Its input is the [batch, classes] probability tensor the tool needs; the written model is never touched.
    """
    outs = {o.name for o in model.graph.output}
    extra = [n.input[0] for n in model.graph.node if n.op_type == "ZipMap" and n.output[0] in outs
             and n.input[0] not in outs]
    if not extra:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # ZipMap comes from scikit-learn converters: small models
    return add_outputs(copy, extra)


def add_outputs(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """model (a copy of the tool's own, changed in place) with the tensors names among its graph outputs, those
    not there already, untyped: onnxruntime takes their types from the graph."""
    have = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in have:
            model.graph.output.add().name = name
    return model


_FLOAT_OUTPUTS = frozenset(k for k, v in _ORT_TYPES.items() if np.issubdtype(v, np.floating))


def output_name(sess, name: str | None = None, skip: Collection[str] = ()) -> str:
    """The output read as logits or probabilities: name, else the first float [batch, classes] output.

    A first output that is a label (int64 [batch]) or a ZipMap is passed over, as scikit-learn and Keras
    exports put one first; with no such output the first one is returned (and its shape error names it).
    skip: outputs the tool added (its statistics taps), never picked.
    """
    outs = [o.name for o in sess.get_outputs() if o.name not in skip]
    if name is None:
        rows = [o.name for o in sess.get_outputs() if o.name not in skip
                and o.type in _FLOAT_OUTPUTS and len(o.shape or ()) == 2]
        return rows[0] if rows else outs[0]
    if name not in outs:
        raise DampError(f"model has no output {name!r}; outputs: {outs}")
    return name


def run_checked(sess, fetch: Sequence[str], feed: dict) -> list:
    """sess.run with onnxruntime's shape/type errors turned into one-line user errors."""
    try:
        return sess.run(list(fetch), feed)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DampError(f"the data does not fit the model: {msg}") from None
