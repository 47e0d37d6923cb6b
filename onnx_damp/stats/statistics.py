"""The statistics of a model on calibration data, as a typed result and as a file.

LayerStats holds one editable operator's per-class float64 input sums, row counts and Grams; Statistics
all of them plus provenance (model hash, input, preprocessing). Files are .npz written with np.savez and
read with allow_pickle=False; metadata is one JSON string.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from onnx_damp.data.dataset import read_npz
from onnx_damp.errors import DampError
from onnx_damp.fileio import atomic_write
from onnx_damp.runtime.modelio import is_repeated_field
from onnx_damp.runtime.tokens import TokenLayout

FORMAT = "onnx-damp-statistics"
FORMAT_VERSION = 1


@dataclass
class Provenance:
    """Where statistics came from: which model, which input, which preprocessing, which data."""

    model_sha256: str            # sha256 of the model file's bytes ("" for a model given in memory)
    graph_sha256: str            # sha256 of the ModelProto's serialized parts (file-independent)
    input_name: str
    preprocessing: str = "npz"   # fingerprint of how images became tensors; shards must agree
    num_outputs: int | None = None
    device: str = "cpu"
    batch_size: int | None = None
    sources: list[str] = field(default_factory=list)  # data each shard read (informational)
    version: str = ""

    def same_model(self, other: "Provenance") -> bool:
        if self.graph_sha256 == other.graph_sha256:
            return True
        return bool(self.model_sha256) and self.model_sha256 == other.model_sha256


def proto_sha256(model: onnx.ModelProto) -> str:
    """sha256 of a ModelProto, serialized field by field (works above protobuf's 2 GB message limit)."""
    h = hashlib.sha256()

    def feed(msg, skip=()):
        for fd, value in msg.ListFields():
            if fd.name in skip:
                continue
            h.update(fd.name.encode() + b"\0")
            values = value if is_repeated_field(fd) else [value]
            for v in values:
                h.update(v.SerializeToString() if hasattr(v, "SerializeToString") else repr(v).encode())

    feed(model, skip=("graph",))
    feed(model.graph)
    return h.hexdigest()


def _label(st: Statistics, k: int) -> str:
    return f"shard {k} ({st.path})" if st.path else f"shard {k}"


# ------------------------------------------------------------------------------------------- save / load
def _groups(st: Statistics) -> tuple[list[LayerStats], dict[str, int]]:
    """Distinct LayerStats objects (operators reading the same activation share one) and node -> group."""
    groups: list[LayerStats] = []
    index: dict[int, int] = {}
    layers = {}
    for node, ls in st.layers.items():
        if id(ls) not in index:
            index[id(ls)] = len(groups)
            groups.append(ls)
        layers[node] = index[id(ls)]
    return groups, layers


def save_statistics(st: Statistics, path: str | os.PathLike) -> str:
    """Write st to path (.npz); returns the path written (np.savez adds .npz when missing)."""
    groups, layers = _groups(st)
    arrays: dict[str, np.ndarray] = {}
    for g, ls in enumerate(groups):
        classes = sorted(ls.rows)
        gram_classes = sorted(ls.grams)
        d = ls.feature_dim
        arrays[f"g{g}_classes"] = np.array(classes, dtype=np.int64)
        arrays[f"g{g}_sums"] = np.array([ls.sums[c] for c in classes], dtype=np.float64).reshape(len(classes), d)
        arrays[f"g{g}_rows"] = np.array([ls.rows[c] for c in classes], dtype=np.int64)
        arrays[f"g{g}_gram_classes"] = np.array(gram_classes, dtype=np.int64)
        arrays[f"g{g}_grams"] = np.array([ls.grams[c] for c in gram_classes],
                                         dtype=np.float64).reshape(len(gram_classes), d, d)
        if ls.total_gram is not None:
            arrays[f"g{g}_total_gram"] = np.asarray(ls.total_gram, dtype=np.float64)
    samples = sorted(st.samples)
    arrays["samples_classes"] = np.array(samples, dtype=np.int64)
    arrays["samples_counts"] = np.array([st.samples[c] for c in samples], dtype=np.int64)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "feature_mode": st.feature_mode,
            "gram_classes": st.gram_classes, "layers": layers,
            "feature_dims": [ls.feature_dim for ls in groups],
            "token_layouts": {n: asdict(lay) for n, lay in sorted(st.token_layouts.items())},
            "provenance": asdict(st.provenance) if st.provenance is not None else None}
    arrays["meta"] = np.array([json.dumps(meta, sort_keys=True)])
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise DampError(f"cannot write statistics: folder {folder} does not exist")
    out = p if p.suffix == ".npz" else p.with_name(p.name + ".npz")
    try:
        atomic_write(out, lambda f: np.savez(f, **arrays), binary=True)
    except OSError as exc:
        raise DampError(f"cannot write statistics to {out}: {exc.strerror or exc}") from None
    return str(out)


def load_statistics(path: str | os.PathLike) -> Statistics:
    """Read a statistics file written by save_statistics; one-line DampError on anything else."""
    p, arrays = read_npz(path, "statistics")
    try:
        meta = json.loads(str(arrays["meta"][0]))
        if meta.get("format") != FORMAT:
            raise ValueError("not an onnx-damp statistics file")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format version {meta.get('format_version')} (this onnx-damp reads {FORMAT_VERSION})")
        groups = []
        for g, d in enumerate(meta["feature_dims"]):
            ls = LayerStats(int(d))
            for c, s, n in zip(arrays[f"g{g}_classes"], arrays[f"g{g}_sums"], arrays[f"g{g}_rows"]):
                ls.sums[int(c)], ls.rows[int(c)] = s.astype(np.float64), int(n)
            for c, gram in zip(arrays[f"g{g}_gram_classes"], arrays[f"g{g}_grams"]):
                ls.grams[int(c)] = gram.astype(np.float64)
            if f"g{g}_total_gram" in arrays:
                ls.total_gram = arrays[f"g{g}_total_gram"].astype(np.float64)
            groups.append(ls)
        layers = {node: groups[int(g)] for node, g in meta["layers"].items()}
        samples = {int(c): int(n) for c, n in zip(arrays["samples_classes"], arrays["samples_counts"])}
        layouts = {n: TokenLayout(**v) for n, v in meta["token_layouts"].items()}
        prov = Provenance(**meta["provenance"]) if meta.get("provenance") else None
        gc = meta["gram_classes"]
        return Statistics(layers, samples, meta["feature_mode"], layouts,
                          None if gc is None else [int(c) for c in gc], prov, str(p))
    except DampError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DampError(f"{p} is not an onnx-damp statistics file ({msg})") from None


# ----------------------------------------------------------------------------------------------- merge


def _summed(arrays: list[np.ndarray]) -> np.ndarray:
    """A new array holding the sum of arrays in order, summed in place (the same values as sum(arrays), without a
    d x d temporary per term: on a 2,400-wide layer each is 46 MB of fresh memory)."""
    out = np.array(arrays[0], dtype=np.float64)
    for a in arrays[1:]:
        out += a
    return out


@dataclass
class LayerStats:
    """Sufficient statistics of one activation in its input-feature space.

    sums[c] and rows[c]: per-class feature sum and number of rows (positions/tokens) for every class;
    grams[c]: uncentred second moment sum x x^T for the classes asked for (the forget classes);
    total_gram: sum x x^T over every row of every class, so the retain Gram is a difference.
    """

    feature_dim: int
    sums: dict[int, np.ndarray] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    grams: dict[int, np.ndarray] = field(default_factory=dict)
    total_gram: np.ndarray | None = None
    basis: np.ndarray | None = None          # wide layer: orthonormal basis U [d, k] of the class prototypes
    projected: "LayerStats | None" = None    # wide layer: statistics of the rows projected on it, x U

    @property
    def wide(self) -> bool:
        """A layer too wide for d x d Grams: sums in d dimensions, second moments only within span(U)."""
        return self.basis is not None

    def add(self, c: int, s: np.ndarray, gram: np.ndarray | None, n: int, keep_gram: bool, total: bool = True) -> None:
        d = self.feature_dim
        if c not in self.sums:
            self.sums[c], self.rows[c] = np.zeros(d), 0
        self.sums[c] += s
        self.rows[c] += n
        if gram is not None:
            self.add_gram(c, gram, keep_gram, total)

    def add_gram(self, c: int | None, gram: np.ndarray, keep_gram: bool, total: bool = True) -> None:
        """Add a second-moment term of class c's rows (no rows or sums): to its Gram if kept, and to the total
        (in place: on wide layers a new d x d array per batch was a large share of the host's work).
        total=False: not to the total, which canonical_total makes from the per-class Grams once they are
        complete (every class's Gram kept: a running total would be one more d x d sum per batch, thrown away)."""
        if keep_gram:
            if c in self.grams:
                self.grams[c] += gram
            else:
                self.grams[c] = np.array(gram, dtype=np.float64)
        if not total:
            return
        if self.total_gram is None:
            self.total_gram = np.array(gram, dtype=np.float64)
        else:
            self.total_gram += gram

    def canonical_total(self) -> None:
        """total_gram as the sum of the per-class Grams in class order, when every class has one.

        Then the total does not depend on how batches were grouped into shards: statistics merged
        from class-aligned shards equal single-process ones bit for bit (see shards.merge).
        """
        if self.grams and set(self.grams) == set(self.rows):
            # 0 + G exactly: a sum started from zeros, but a -0.0 stays -0.0
            self.total_gram = _summed([self.grams[c] for c in sorted(self.grams)])

    def mean(self, c: int) -> np.ndarray:
        return self.sums[c] / self.rows[c]

    def group_moments(self, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean, uncentred second moment and row count of the union of classes.

        Classes without a kept Gram are only allowed as the complement of those with one.
        """
        n = sum(self.rows[c] for c in classes)
        s = sum(self.sums[c] for c in classes)
        if all(c in self.grams for c in classes):
            g = _summed([self.grams[c] for c in classes])
        else:
            others = [c for c in self.rows if c not in classes]
            if not all(c in self.grams for c in others):
                raise ValueError("second moments are known only for the kept classes and their complement")
            g = self.total_gram - _summed([self.grams[c] for c in others]) if others else self.total_gram.copy()
        g /= n
        return s / n, g, n


@dataclass
class Statistics:
    """Statistics for all editable operators of one model, plus per-class sample counts."""

    layers: dict[str, LayerStats]
    samples: dict[int, int]
    feature_mode: str
    token_layouts: dict[str, TokenLayout] = field(default_factory=dict)  # node -> where its class token is read
    gram_classes: list[int] | None = field(default_factory=list)  # classes with a kept Gram; None: every class
    provenance: "Provenance | None" = None  # model hash, input, preprocessing (set by onnx_damp.collect)
    path: str | None = None                 # the file it was loaded from (for messages; not saved)
    outputs: "np.ndarray | None" = field(default=None, repr=False)  # model outputs per sample (not saved)

    @property
    def num_samples(self) -> int:
        return int(sum(self.samples.values()))

    def save(self, path) -> str:
        """Write these statistics to an .npz (float64 arrays; metadata as JSON); see save_statistics."""
        return save_statistics(self, path)

    @classmethod
    def load(cls, path) -> "Statistics":
        """Read statistics written by save (never unpickles)."""
        return load_statistics(path)
