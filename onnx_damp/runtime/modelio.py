"""Loading and saving ONNX models safely: clear errors, contained external data, atomic writes."""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx import external_data_helper

from onnx_damp.errors import DampError
from onnx_damp.fileio import usual_mode


def proto_size(model: onnx.ModelProto) -> int:
    """model.ByteSize(), or 2 GiB when protobuf refuses to size a message that large (it raises)."""
    try:
        return model.ByteSize()
    except Exception:  # google.protobuf.message.EncodeError above 2 GiB
        return 1 << 31


PROTO_LIMIT = 1_800_000_000  # protobuf cannot serialise a message of 2 GiB or more: stay clear of it


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Size of a tensor's values from its dims and type: reading raw_data would copy the bytes, and
    ByteSize() raises on a tensor above protobuf's 2 GiB limit."""
    itemsize = _ITEMSIZE.get(t.data_type)
    if itemsize is None:
        itemsize = _ITEMSIZE[t.data_type] = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return math.prod(t.dims) * itemsize  # Python ints: no overflow, and fast for the few dims of a tensor


_ITEMSIZE: dict[int, int] = {}  # ONNX data type -> bytes per element


def _tensor_payload(t: onnx.TensorProto) -> int:
    """An upper bound of the bytes a tensor's values take when serialised, read without serialising anything.

    raw_data is sized from dims and type (not read: that would copy it); varint fields count 10 bytes a
    value (a negative int32 takes that many), fixed-width ones their width.
    """
    raw = tensor_nbytes(t) if t.HasField("raw_data") else 0
    return (raw + 4 * len(t.float_data) + 8 * len(t.double_data)
            + 10 * (len(t.int32_data) + len(t.int64_data) + len(t.uint64_data))
            + sum(len(b) + 10 for b in t.string_data))


def _nodes_size(graph: onnx.GraphProto) -> int:
    """The exact serialised size of graph's nodes (attributes and subgraphs included), protobuf's own count:
    one call per node, where walking every attribute in Python took 9 ms on a 683-node ViT each session."""
    try:
        return sum(n.ByteSize() for n in graph.node)
    except Exception:  # a node of 2 GiB or more: protobuf refuses to size it
        return 1 << 31


def fits_in_proto(model: onnx.ModelProto) -> bool:
    """proto_size(model) < PROTO_LIMIT, without sizing the whole message when the weights are clearly small.

    ByteSize walks the whole message (about 0.1 s for a 45 MB model, once per session and check); an
    upper bound of the initializers' payloads is known for free and the nodes are sized one by one, and
    below half the limit the rest of a graph cannot make up the difference, so only models with large
    weights are sized exactly, and so are models with sparse initializers or local functions.
    """
    g = model.graph
    if len(g.sparse_initializer) or len(model.functions):
        return proto_size(model) < PROTO_LIMIT
    if sum(_tensor_payload(t) for t in g.initializer) + _nodes_size(g) < PROTO_LIMIT // 2:
        return True
    return proto_size(model) < PROTO_LIMIT


def is_repeated_field(fd) -> bool:
    """Whether a protobuf field descriptor is repeated, across protobuf versions."""
    rep = getattr(fd, "is_repeated", None)  # protobuf >= 5.28; older versions have only .label
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_external_locations(model: onnx.ModelProto, base: Path) -> bool:
    """Refuse external-data locations that escape the model's folder; return whether any exist."""
    base = base.resolve()
    found = False
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        found = True
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (base / info.location).resolve()
        if os.path.isabs(info.location) or (base != target and base not in target.parents):
            raise DampError(f"external data path {info.location!r} of tensor {tensor.name!r} "
                            f"points outside the model's folder {base}")
        if not target.is_file():
            raise DampError(f"external data file {info.location!r} of tensor {tensor.name!r} is missing")
    return found


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX model with its external data; raise DampError on a missing or corrupt file."""
    p = Path(path)
    if not p.exists():
        raise DampError(f"model file not found: {p}")
    if not p.is_file():
        raise DampError(f"model path is not a file: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises several types on garbage input
        raise DampError(f"{p} is not a readable ONNX model ({type(exc).__name__})") from None
    if not model.graph.node:
        raise DampError(f"{p} is not an ONNX model (no graph nodes)")
    if _check_external_locations(model, p.parent):
        external_data_helper.load_external_data_for_model(model, str(p.parent))
    return model


def has_external_data(path: str | os.PathLike) -> bool:
    """Whether the model file at path stores tensors in external files."""
    model = onnx.load(str(path), load_external_data=False)
    return any(external_data_helper.uses_external_data(t)
               for t in external_data_helper._get_all_tensors(model))


def check_output_path(src: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Validate the output path before any work: not the input, folder exists and is writable."""
    out_p = Path(out)
    if Path(src).resolve() == out_p.resolve():
        raise DampError(f"output path {out} is the input model; choose another path (the input is never overwritten)")
    folder = out_p.parent if str(out_p.parent) else Path(".")
    if not folder.is_dir():
        raise DampError(f"output folder does not exist: {folder}")
    if out_p.exists() and out_p.is_dir():
        raise DampError(f"output path is a folder: {out}")
    try:  # os.access says yes to root even on read-only file systems: try it for real
        fd, probe = tempfile.mkstemp(prefix=".onnx-damp-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DampError(f"output folder is not writable: {folder} ({exc.strerror})") from None
    return out_p


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def save_model_atomic(model: onnx.ModelProto, out: str | os.PathLike, external_data: bool = False) -> list[Path]:
    """Write model (and its external data file) via a temporary folder and rename, so no half file remains."""
    out_p = Path(out)
    folder = out_p.parent if str(out_p.parent) else Path(".")
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=".onnx-damp-", dir=folder))
    except OSError as exc:
        raise DampError(f"cannot write {out}: {exc.strerror or exc}") from None
    written: list[Path] = []
    try:
        tmp_model = tmpdir / out_p.name
        big = not fits_in_proto(model) if not external_data else True
        if big:
            model = _copy(model)  # saving as external data rewrites the proto in place
            location = out_p.name + ".data"
            onnx.save_model(model, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=location, size_threshold=1024)
            if (tmpdir / location).exists():  # no file when every tensor is under the size threshold
                usual_mode(tmpdir / location)
                os.replace(tmpdir / location, folder / location)
                written.append(folder / location)
        else:
            onnx.save_model(model, str(tmp_model))
        usual_mode(tmp_model)
        os.replace(tmp_model, out_p)
        written.append(out_p)
        return written
    except OSError as exc:
        raise DampError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def data_input(model: onnx.ModelProto, input_name: str | None = None) -> "onnx.ValueInfoProto | None":
    """The graph input the data feed: the one named input_name, else the only input that is not an
    initializer; None when there is no such single input (the session then says which to pick)."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if input_name is not None:
        inputs = [i for i in inputs if i.name == input_name]
    return inputs[0] if len(inputs) == 1 else None
