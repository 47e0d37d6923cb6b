"""torchvision's on-disk data sets, read natively (no torch): MNIST-style idx files and CIFAR python batches.

- idx (MNIST, FashionMNIST, KMNIST, ...): `<root>/<Name>/raw/{train,t10k}-images-idx3-ubyte[.gz]` with the
  matching `-labels-idx1-ubyte[.gz]`; a folder (torchvision root, `<Name>`, `<Name>/raw`, or any folder
  holding the idx files) means the train split; give the t10k images file itself for the test split.
- CIFAR-10 (`cifar-10-batches-py/data_batch_1..5`, `test_batch`) and CIFAR-100 (`cifar-100-python/train`,
  `test`, fine labels): a folder means the train split; give the `test_batch` / `test` file for the test split.
  The batches are pickles: they are read with an unpickler that only rebuilds numpy arrays of plain numbers,
  dicts, lists, strings and numbers, and refuses anything else (one-line error) instead of executing it.

The 8-bit images stay in memory as they are stored (MNIST train 47 MB, CIFAR train 150 MB); preprocessing
(preprocess.py) runs per batch when rows are indexed.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from onnx_damp.data.dataset import Dataset, LazyArray
from onnx_damp.errors import DampError
from onnx_damp.data.preprocess import Preprocess, check_fits

IDX_TRAIN, IDX_TEST = "train-images-idx3-ubyte", "t10k-images-idx3-ubyte"
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class ArrayImages(LazyArray):
    """8-bit images [N, H, W, C] in memory, preprocessed when rows are indexed."""

    def __init__(self, images: np.ndarray, pre: Preprocess, source: str):
        self.images, self.pre, self.source = images, pre, source
        self.hw, self.stored_channels = images.shape[1:3], images.shape[3]
        super().__init__(len(images), pre.sample_shape(self.hw, self.stored_channels), pre.dtype)

    def check_fits(self, model_input_shape, input_name: str = "input") -> None:
        check_fits(self.pre, model_input_shape, self.hw, self.stored_channels, self.source, input_name)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return self.pre.apply_array(self.images[idx])


def array_dataset(x: np.ndarray, y: np.ndarray, pre: Preprocess, source: str) -> Dataset:
    if x.ndim == 3:
        x = x[..., None]
    return Dataset(ArrayImages(x, pre, source), y.astype(np.int64), source)


def find_torchvision(p: Path) -> list[tuple[str, Path, list[Path]]]:
    """(kind, folder, files) for every idx or CIFAR data set at p, p/raw, p/<Name>/raw or p/cifar-*."""
    subdirs = sorted(d for d in p.iterdir() if d.is_dir()) if p.is_dir() else []
    cands = [p, p / "raw"] + [d / "raw" for d in subdirs] + [d for d in subdirs if d.name.startswith("cifar")]
    out = []
    for c in dict.fromkeys(cands):
        if not c.is_dir():
            continue
        idx = [f for split in (IDX_TRAIN, IDX_TEST) for f in (c / split, c / (split + ".gz")) if f.is_file()]
        if idx:
            out.append(("idx", c, idx[:1]))
            continue
        batches = sorted(c.glob("data_batch_*"), key=lambda f: (len(f.name), f.name))
        if batches:
            out.append(("cifar", c, batches))
        elif (c / "train").is_file() and (c / "meta").is_file():
            out.append(("cifar", c, [c / "train"]))
        elif (c / "test_batch").is_file():
            out.append(("cifar", c, [c / "test_batch"]))
    return out


# ------------------------------------------------------------------------------------------------- idx
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One idx file (optionally gzip-compressed) as a numpy array."""
    p = Path(path)
    try:
        with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DampError(f"cannot read idx file {p}: {exc}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_TYPES or data[3] == 0:
        raise DampError(f"{p} is not an idx file (bad magic number)")
    nd = data[3]
    if len(data) < 4 + 4 * nd:
        raise DampError(f"{p}: truncated idx header")
    dims = struct.unpack(f">{nd}I", data[4:4 + 4 * nd])
    dt = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - 4 - 4 * nd != count * dt.itemsize:
        raise DampError(f"{p}: idx header says {list(dims)} but the file holds "
                        f"{(len(data) - 4 - 4 * nd) // dt.itemsize} values")
    return np.frombuffer(data, dt, count, 4 + 4 * nd).reshape(dims).astype(dt.newbyteorder("="))


def read_idx_pair(images_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, H, W] uint8 and labels [N] from an images idx file and its labels file beside it."""
    p = Path(images_path)
    base = p.name[:-3] if p.name.endswith(".gz") else p.name
    lab_name = base.replace("-images-idx3-ubyte", "-labels-idx1-ubyte")
    labels = [p.parent / lab_name, p.parent / (lab_name + ".gz")]
    lab = next((f for f in labels if f.is_file()), None)
    if lab is None:
        raise DampError(f"{p}: labels file {lab_name}[.gz] not found beside it")
    x, y = read_idx(p), read_idx(lab)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DampError(f"{p}: expected 8-bit images [N, H, W], got {x.dtype} {list(x.shape)}")
    if y.ndim != 1 or len(y) != len(x):
        raise DampError(f"{lab}: expected {len(x)} labels, got shape {list(y.shape)}")
    return x, y.astype(np.int64)


# ----------------------------------------------------------------------------------------------- CIFAR
def is_pickle(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as r
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct as r
    return r


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError("only plain numpy arrays are allowed")
    return _reconstruct()(subtype, shape, dtype)


def _safe_dtype(*args):
    d = np.dtype(*args)
    if d.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return d


def _latin1_encode(s="", encoding="latin1", *rest):
    """What Python 3 writes for bytes in protocol-2 pickles: _codecs.encode(text, 'latin1')."""
    if not isinstance(s, str) or encoding not in ("latin1", "latin-1") or rest:
        raise pickle.UnpicklingError("only latin-1 byte strings are allowed")
    return s.encode("latin1")


def _safe_bytes(*args):
    if args and not isinstance(args[0], (bytes, bytearray, str)):
        raise pickle.UnpicklingError("bytes() only of strings")
    return bytes(*args) if not args or not isinstance(args[0], str) else args[0].encode(*args[1:2] or ("latin1",))


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "bytes"): _safe_bytes,
    ("__builtin__", "bytes"): _safe_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and plain numpy arrays; refuses every other global."""

    def find_class(self, module, name):
        fn = _ALLOWED.get((module, name))
        if fn is None:
            raise _Refused(f"{module}.{name}")
        return fn


class _Refused(Exception):
    pass


def load_batch(path: str | os.PathLike) -> dict:
    """One CIFAR python batch file as a dict with str keys, never executing code from the pickle."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as exc:
        raise DampError(f"{p}: refusing to unpickle: it references {exc}, and CIFAR batches hold only numpy "
                        "arrays, lists, strings and numbers") from None
    except OSError as exc:
        raise DampError(f"cannot read {p}: {exc}") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a damaged or foreign file
        raise DampError(f"{p} is not a CIFAR python batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DampError(f"{p} is not a CIFAR python batch (holds a {type(obj).__name__}, not a dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar(files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 32, 32, 3] uint8 and labels [N] (CIFAR-100: fine labels) from CIFAR python batches."""
    xs, ys = [], []
    for f in files:
        d = load_batch(f)
        data = d.get("data")
        labels = d.get("labels", d.get("fine_labels"))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DampError(f"{f}: 'data' must be a uint8 array [N, 3072] (CIFAR 32x32 RGB)")
        try:
            y = np.asarray(labels, dtype=np.int64)
        except (TypeError, ValueError):
            y = None
        if y is None or y.ndim != 1 or len(y) != len(data):
            raise DampError(f"{f}: 'labels' (or 'fine_labels') must be {len(data)} integers")
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(y)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys)
