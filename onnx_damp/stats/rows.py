"""Input rows of wide layers (one row per image) kept through the statistics pass.

A layer too wide for d x d Grams gets its second moments within the span of the class prototypes, which is known
only once the pass has summed every class (stats.collector). Its rows are kept as they stream by, in memory within
a budget, else in an unlinked temporary file, and read back in bounded blocks once the span is known: one pass
over the data, with memory flat in the data (the file is not mapped, so it never counts in the resident set).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from onnx_damp.stats.statistics import LayerStats

BLOCK_BYTES = 8 << 20  # rows read back (and projected) at a time, from memory or from the file
SPILL_HEADROOM = 256 << 20  # free space left on the temporary folder's disk after a spill file, at least


def can_spill(nbytes: int, directory: str | None = None) -> bool:
    """Whether the temporary folder (directory, else TMPDIR's) has room for nbytes of rows and the headroom."""
    try:
        free = shutil.disk_usage(directory or tempfile.gettempdir()).free
    except OSError:
        return False
    return free >= nbytes + SPILL_HEADROOM


class KeptRows:
    """One layer's rows, appended batch by batch with their class, in memory (at most capacity rows) or in a
    temporary file (spill); projected() gives per-class sums and Grams of the rows times a basis, in float64,
    block by block: the same blocks, so the same numbers, wherever the rows were kept."""

    def __init__(self, d: int, capacity: int, spill: bool = False, directory: str | None = None,
                 block_bytes: int = BLOCK_BYTES) -> None:
        self.d, self.capacity, self.spill, self.directory, self.block_bytes = d, capacity, spill, directory, block_bytes
        self.n = 0
        self.ranges: dict[int, list[list[int]]] = {}  # class -> [first row, rows] runs in the stream
        self.dtype: np.dtype | None = None
        self._mem: np.ndarray | None = None
        self._file = None

    def append(self, c: int, rows: np.ndarray) -> None:
        """Add rows [k, d] of class c (float32, or float64 kept as it is)."""
        if self.dtype is None:
            self.dtype = np.dtype(np.float64 if rows.dtype == np.float64 else np.float32)
            if self.spill:
                self._file = tempfile.TemporaryFile(dir=self.directory, buffering=0)  # unbuffered: no copy
            else:
                self._mem = np.empty((self.capacity, self.d), self.dtype)
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        if self._file is not None:
            self._file.seek(self.n * self.d * self.dtype.itemsize)
            view = memoryview(block).cast("B")
            while view:  # a raw file may take part of a write; a full disk raises OSError (the caller falls back)
                view = view[self._file.write(view):]
        else:
            self._mem[self.n:self.n + len(block)] = block
        runs = self.ranges.setdefault(int(c), [])
        if runs and runs[-1][0] + runs[-1][1] == self.n:
            runs[-1][1] += len(block)
        else:
            runs.append([self.n, len(block)])
        self.n += len(block)

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows [start, start + count) of the stream (positioned reads: several threads may read at once)."""
        if self._file is None:
            return self._mem[start:start + count]
        out = np.empty((count, self.d), self.dtype)
        view, offset = memoryview(out).cast("B"), start * self.d * self.dtype.itemsize
        while view:
            k = os.preadv(self._file.fileno(), [view], offset)
            if not k:
                raise OSError("the statistics pass's temporary row file ended early")
            view, offset = view[k:], offset + k
        return out

    def block_ranges(self) -> list[tuple[int, int, int]]:
        """(class, first row, rows) of every block, class by class in class order, each class's rows in stream
        order, at most block_bytes a block (one row at least)."""
        step = max(1, self.block_bytes // (self.d * (self.dtype or np.dtype(np.float32)).itemsize))
        return [(c, a, min(step, start + count - a)) for c in sorted(self.ranges)
                for start, count in self.ranges[c] for a in range(start, start + count, step)]

    def projected(self, basis: np.ndarray, workers: int = 2) -> LayerStats:
        """Per-class sums and Grams of the rows projected on basis, x U (float64), as a second pass would reduce
        them in-graph: a LayerStats of width k with every class's Gram and their total. workers: blocks read
        and projected at once (threads; numpy lets go of the GIL), summed in block order whatever their number,
        so the numbers do not depend on it."""
        def one(block: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray, int]:
            c, start, count = block
            xu = self.read(start, count).astype(np.float64) @ basis
            return c, xu.sum(0), xu.T @ xu, count

        st = LayerStats(basis.shape[1])
        with ThreadPoolExecutor(max(1, workers)) as pool:  # map keeps the order; at most `workers` blocks held
            for c, s, gram, n in pool.map(one, self.block_ranges()):
                st.add(c, s, gram, n, True, total=False)
        st.canonical_total()
        return st

    def close(self) -> None:
        """Release the rows (the temporary file is removed)."""
        if self._file is not None:
            self._file.close()
        self._file, self._mem = None, None

    def __enter__(self) -> "KeptRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
