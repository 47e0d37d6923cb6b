"""Labelled data sets: safe .npz loading, image folders and torchvision formats (lazy), validation against a
model input, per-class batching, and a prefetching batch loop."""
from __future__ import annotations

import copy
import os
import zipfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from onnx_damp.errors import DampError


@dataclass
class Dataset:
    """Preprocessed inputs x (N, ...) and integer class labels y (N,)."""

    x: "np.ndarray | LazyArray"
    y: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def classes(self) -> np.ndarray:
        return label_values(self.y)


def label_values(y: np.ndarray) -> np.ndarray:
    """The sorted distinct values of y: np.unique without importing numpy.ma (numpy 2.4's unique calls
    np.ma.is_masked unless counts are asked for: 16 ms of every run's start-up)."""
    return np.unique(y, return_counts=True)[0]


class LazyArray:
    """A read-only [N, ...] array-like whose rows are made on demand (decoded, preprocessed) when indexed.

    Indexing with an int, a slice or an integer index array returns a numpy array of just those rows;
    astype() returns another lazy view. Subclasses implement _rows(indices) -> [len(indices), ...] and may
    implement check_fits(model_input_shape, input_name) (a friendly message before any work).
    """

    lazy = True

    def __init__(self, n: int, sample_shape: Sequence[int], dtype="float32"):
        self._n, self._sample_shape, self._dtype = int(n), tuple(int(d) for d in sample_shape), np.dtype(dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self._n,) + self._sample_shape

    @property
    def ndim(self) -> int:
        return 1 + len(self._sample_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    def __len__(self) -> int:
        return self._n

    def astype(self, dtype, copy: bool = True) -> "LazyArray":  # noqa: A002 (numpy's signature)
        view = _copy(self)
        view._dtype = np.dtype(dtype)
        return view

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            idx = np.array([key], dtype=np.int64)
        elif isinstance(key, slice):
            idx = np.arange(*key.indices(self._n), dtype=np.int64)
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
                raise TypeError(f"{type(self).__name__} takes an int, a slice or a 1-D integer index array")
            idx = idx.astype(np.int64)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"index out of range for {self._n} samples")
        idx = np.where(idx < 0, idx + self._n, idx)
        rows = self._rows(idx) if idx.size else np.zeros((0,) + self._sample_shape, self._dtype)
        rows = rows.astype(self._dtype, copy=False)
        return rows[0] if isinstance(key, (int, np.integer)) else rows

    def __array__(self, dtype=None, copy=None):
        """Materialise every row (only for callers that need a real array; the tool itself never does)."""
        return self[:].astype(dtype or self._dtype, copy=False)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self._dtype})"


class SubsetArray(LazyArray):
    """Rows `indices` of another array (numpy or lazy), without copying them: a view for the fit/held-out split."""

    def __init__(self, base, indices: np.ndarray):
        super().__init__(len(indices), tuple(base.shape[1:]), base.dtype)
        self._base, self._idx = base, np.asarray(indices, dtype=np.int64)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self._base[self._idx[idx]])


def subset(ds: "Dataset", indices: np.ndarray) -> "Dataset":
    """The samples `indices` of ds as a Dataset (rows read on demand)."""
    idx = np.asarray(indices, dtype=np.int64)
    return Dataset(SubsetArray(ds.x, idx), np.asarray(ds.y)[idx], ds.source)


def _copy(obj):
    return copy.copy(obj)


def check_fits_model(ds: Dataset, model, input_name: str | None = None) -> None:
    """For lazily preprocessed images: check the preprocessing against the model input before any work."""
    check = getattr(ds.x, "check_fits", None)
    if check is None:
        return
    from onnx_damp.runtime.modelio import data_input

    inp = data_input(model, input_name)
    if inp is None:
        return  # the session reports which input to pick
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    check(dims, inp.name)


def read_npz(path: str | os.PathLike, what: str, keys: Sequence[str] | None = None,
             hint: str = "") -> tuple[Path, dict[str, np.ndarray]]:
    """The arrays (keys, or every one) of an .npz file, never unpickling; one-line DampError otherwise.

    what names the file in messages ("data", "statistics"); hint follows the list of missing keys.
    """
    p = Path(path)
    if not p.is_file():
        raise DampError(f"{what} file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = set(keys or ()) - set(npz.files)
            if missing:
                raise DampError(f"{p} lacks array(s) {sorted(missing)}{hint}")
            return p, {k: npz[k] for k in (keys or npz.files)}
    except DampError:
        raise
    except ValueError as exc:
        raise DampError(f"{p}: cannot read arrays without pickle ({exc})") from None
    except Exception as exc:
        raise DampError(f"{p} is not a readable {what} .npz file ({type(exc).__name__})") from None


def load_npz(path: str | os.PathLike) -> Dataset:
    """`x` and `y` of an .npz file, never unpickling; x is read on demand (data.npzmap) where it can be."""
    from onnx_damp.data.npzmap import map_member

    p, arrays = read_npz(path, "data", ("y",), "; expected 'x' (inputs) and 'y' (labels)")
    try:
        x = map_member(p, "x")
    except (OSError, ValueError, zipfile.BadZipFile):
        x = None
    if x is None:
        p, arrays = read_npz(path, "data", ("x", "y"), "; expected 'x' (inputs) and 'y' (labels)")
        x = arrays["x"]
    return validate(Dataset(x, arrays["y"], str(p)))


def _non_finite_rows(x: np.ndarray, chunk_bytes: int = 8 << 20) -> int:
    """Number of samples of x holding a NaN or an infinity, checked in chunks (no full-size mask)."""
    per_row = max(1, int(np.prod(x.shape[1:])) * x.dtype.itemsize)
    step = max(1, chunk_bytes // per_row)
    bad = 0
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        bad += int(np.count_nonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)))
    return bad


def validate(ds: Dataset) -> Dataset:
    """Check dtypes, lengths, labels and finiteness; convert labels to int64."""
    x, y = ds.x, ds.y
    if y.ndim != 1:
        raise DampError(f"{ds.source}: labels 'y' must be 1-D, got shape {y.shape}")
    if x.ndim < 1 or x.shape[0] != y.shape[0]:
        raise DampError(f"{ds.source}: 'x' has {x.shape[0] if x.ndim else 0} rows but 'y' has {y.shape[0]}")
    if len(y) == 0:
        raise DampError(f"{ds.source}: the data set is empty")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DampError(f"{ds.source}: labels 'y' must be integer class indices, got {y.dtype}")
    if y.min() < 0:
        raise DampError(f"{ds.source}: labels must be non-negative class indices, found {int(y.min())}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DampError(f"{ds.source}: inputs 'x' must be numeric, got {x.dtype}")
    # lazy inputs are 8-bit pixels scaled by finite, non-zero constants: finite by construction, and a
    # full decoding pass only to check that would double the reading time
    if not getattr(x, "lazy", False) and np.issubdtype(x.dtype, np.floating):
        bad = _non_finite_rows(x)
        if bad:
            raise DampError(f"{ds.source}: inputs 'x' contain NaN or infinite values in {bad} sample(s)")
    return Dataset(x, y.astype(np.int64, copy=False), ds.source)


def check_against_input(ds: Dataset, shape: Sequence, dtype: np.dtype, input_name: str) -> np.ndarray:
    """Check that samples fit the model input (rank and fixed dims) and return x cast to its dtype."""
    sample_shape = tuple(ds.x.shape[1:])
    model_tail = tuple(shape[1:]) if len(shape) else ()
    if len(shape) != ds.x.ndim:
        raise DampError(f"{ds.source}: samples have shape {sample_shape} but model input {input_name!r} "
                        f"expects {_fmt_shape(shape)} (rank {len(shape)} with the batch axis)")
    for got, want in zip(sample_shape, model_tail):
        if isinstance(want, int) and want > 0 and got != want:
            raise DampError(f"{ds.source}: samples have shape {sample_shape} but model input {input_name!r} "
                            f"expects {_fmt_shape(shape)}")
    return ds.x.astype(dtype, copy=False)


def _fmt_shape(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else (d or "?") for d in shape) + "]"


def class_batches(y: np.ndarray, batch_size: int, classes: Sequence[int] | None = None,
                  fixed_batch: int | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yield (class, sample indices, number of real samples) batches that each hold a single class.

    Single-class batches let every row of every intermediate tensor be attributed to one class
    without knowing where the batch axis sits inside the graph. With a fixed model batch size the
    last batch of a class is padded by cycling that class's own samples (never another class).
    """
    for c in (label_values(y) if classes is None else classes):
        idx = np.flatnonzero(y == c)
        size = fixed_batch or batch_size
        for start in range(0, len(idx), size):
            chunk = idx[start:start + size]
            real = len(chunk)
            if fixed_batch and real < fixed_batch:
                chunk = np.resize(np.concatenate([chunk, idx]), fixed_batch)
            yield int(c), chunk, real


def plain_batches(n: int, batch_size: int, fixed_batch: int | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """Yield (indices, number of real samples) for prediction; fixed batches are padded by repetition."""
    size = fixed_batch or batch_size
    for start in range(0, n, size):
        idx = np.arange(start, min(n, start + size))
        real = len(idx)
        if fixed_batch and real < fixed_batch:
            idx = np.resize(idx, fixed_batch)
        yield idx, real


B = TypeVar("B")


def prefetch(batches: Iterable[B], load: Callable[[B], np.ndarray]) -> Iterator[tuple[B, np.ndarray]]:
    """Yield (batch, load(batch)) while the next batch is loaded in a background thread.

    With lazily decoded images the decoding of batch k+1 overlaps the model run on batch k, so
    onnxruntime never waits on decoding; for in-memory arrays load is a cheap indexing copy.
    """
    it = iter(batches)

    def start(b):
        box: dict = {}

        def work():
            try:
                box["x"] = load(b)
            except BaseException as exc:  # re-raised in the consumer
                box["err"] = exc
        t = threading.Thread(target=work, daemon=True)
        t.start()
        return b, t, box

    nxt = None
    for b in it:
        nxt = start(b)
        break
    while nxt is not None:
        b, t, box = nxt
        t.join()
        if "err" in box:
            raise box["err"]
        nxt = None
        for b2 in it:
            nxt = start(b2)
            break
        yield b, box["x"]
