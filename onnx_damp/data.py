"""Labelled data sets: safe .npz loading, validation against a model input, per-class batching."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import DampError


@dataclass
class Dataset:
    """Preprocessed inputs x (N, ...) and integer class labels y (N,)."""

    x: np.ndarray
    y: np.ndarray
    source: str = "<memory>"

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def classes(self) -> np.ndarray:
        return np.unique(self.y)


def as_dataset(data: "Dataset | str | os.PathLike | tuple") -> Dataset:
    """Accept a Dataset, a path to an .npz file, or an (x, y) tuple."""
    if isinstance(data, Dataset):
        return validate(data)
    if isinstance(data, tuple) and len(data) == 2:
        return validate(Dataset(np.asarray(data[0]), np.asarray(data[1])))
    return load_npz(data)


def load_npz(path: str | os.PathLike) -> Dataset:
    """Load `x` and `y` from an .npz file without ever unpickling objects."""
    p = Path(path)
    if not p.is_file():
        raise DampError(f"data file not found: {p}")
    try:
        with np.load(p, allow_pickle=False) as npz:
            missing = {"x", "y"} - set(npz.files)
            if missing:
                raise DampError(f"{p} lacks array(s) {sorted(missing)}; expected 'x' (inputs) and 'y' (labels)")
            x, y = npz["x"], npz["y"]
    except DampError:
        raise
    except ValueError as exc:
        raise DampError(f"{p}: cannot read arrays without pickle ({exc})") from None
    except Exception as exc:
        raise DampError(f"{p} is not a readable .npz file ({type(exc).__name__})") from None
    return validate(Dataset(x, y, str(p)))


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
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
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
    for c in (np.unique(y) if classes is None else classes):
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
