"""An .npz member as rows read on demand, so memory stays flat in the size of the data.

An uncompressed member (np.savez) is read in place: its .npy header is parsed and rows are read with
positioned reads at the data's offset in the zip file (no memory map: mapped pages would count in the
process's resident memory as they are touched). A compressed one (np.savez_compressed) is inflated once,
streamed, into an anonymous temporary file (deleted when the array goes) and read there. Members are never
unpickled: an object dtype or a Fortran-order array falls back to np.load(allow_pickle=False).
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from onnx_damp.data.dataset import LazyArray

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header (30 bytes)


class MappedArray(LazyArray):
    """Rows of a C-order array stored at offset start of an open file, read on demand and cast per batch."""

    lazy = False  # ordinary numbers read from a file: checked for NaN like any array (in chunks)

    def __init__(self, file, start: int, shape: tuple, dtype: np.dtype, path: str | None = None):
        super().__init__(shape[0], shape[1:], dtype)
        self._file, self._start, self._stored, self._path = file, int(start), np.dtype(dtype), path
        self._row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self._stored.itemsize

    def __copy__(self) -> "MappedArray":  # astype's view shares the open file (pickling, below, does not)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce__(self):
        """Pickled (Ray tasks) as the file to reopen, or as the rows themselves for an inflated member."""
        if self._path is None:
            return np.asarray, (self[:],)
        return _reopen, (self._path, self._start, (self._n,) + self._sample_shape, self._stored.str, self._dtype.str)

    def _rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx),) + self._sample_shape, dtype=self._stored)
        flat = out.reshape(len(idx), -1).view(np.uint8).reshape(len(idx), -1)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        runs = np.flatnonzero(np.diff(sorted_idx) != 1) + 1  # contiguous runs of rows: one read each
        fd = self._file.fileno()
        for run in np.split(np.arange(len(idx)), runs):
            first, n = int(sorted_idx[run[0]]), len(run)
            buf = os.pread(fd, n * self._row_bytes, self._start + first * self._row_bytes)
            if len(buf) != n * self._row_bytes:
                raise OSError(f"short read in {getattr(self._file, 'name', 'the data file')}")
            flat[order[run]] = np.frombuffer(buf, dtype=np.uint8).reshape(n, self._row_bytes)
        return out


def _reopen(path: str, start: int, shape: tuple, stored: str, dtype: str) -> MappedArray:
    arr = MappedArray(open(path, "rb"), start, shape, np.dtype(stored), path)
    return arr.astype(dtype) if np.dtype(dtype) != arr.dtype else arr


def map_member(path: str | Path, key: str) -> "MappedArray | None":
    """Member key of the .npz at path as a MappedArray, or None when it cannot be mapped (then load it)."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(f"{key}.npy")
        except KeyError:
            return None
        with zf.open(info) as f:
            header = _npy_header(f)
        if header is None:
            return None
        shape, fortran, dtype, header_len = header
        if fortran or dtype.hasobject or len(shape) == 0:
            return None
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as raw:
                raw.seek(info.header_offset)
                fields = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                return None
            start = info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1] + header_len
            return MappedArray(open(path, "rb"), start, shape, dtype, str(path))
        tmp = tempfile.TemporaryFile()
        with zf.open(info) as f:
            shutil.copyfileobj(f, tmp, 1 << 20)
        tmp.flush()
        return MappedArray(tmp, header_len, shape, dtype)


def _npy_header(f) -> "tuple[tuple, bool, np.dtype, int] | None":
    """(shape, fortran order, dtype, header length in bytes) of the .npy stream f, or None if unreadable."""
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npf.read_array_header_2_0(f)
        else:
            return None
    except ValueError:
        return None
    return tuple(shape), bool(fortran), np.dtype(dtype), f.tell()
