"""Statistics as files: save, load and merge per-shard statistics (calibration at scale).

A shard's statistics are sums: per-class float64 feature sums, row counts and uncentred Gram
matrices, plus the total Gram. Merging shards is adding them, exactly as one process would have
added its batches, except for the order of the float64 additions. Two cases:

* class-aligned shards (every class wholly inside one shard): each class's sums, rows and Gram
  are the very numbers one process computes, and when every class keeps its Gram the total
  Gram is defined as the class-order sum of the per-class Grams (LayerStats.canonical_total),
  so merged statistics equal single-process ones bit for bit;
* a class split across shards: its sums are added in a different grouping ((b1+b2)+b3 vs
  b1+(b2+b3)) and its batches differ; each batch is reduced in float32 inside onnxruntime (around
  its own shift, see instrument.py), so results agree to a few 1e-5 relative, not bit for bit.

Files are .npz written with np.savez and read with allow_pickle=False; metadata is one JSON string.
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
from onnx_damp.runtime.modelio import is_repeated_field
from onnx_damp.stats.collector import LayerStats, Statistics
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
    tmp = out.with_name(f".{out.name}.tmp.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
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
def _check_compatible(first: Statistics, other: Statistics, k: int) -> None:
    """Refuse (one line, naming shard k) statistics that cannot be added to the first shard's."""
    who = _label(other, k)
    ref = _label(first, 0)
    a, b = first.provenance, other.provenance
    if (a is None) != (b is None):
        raise DampError(f"{who} {'lacks' if b is None else 'has'} provenance (model hash) but {ref} "
                        f"{'has' if b is None else 'lacks'} it; collect every shard with onnx-damp collect")
    if a is not None and b is not None:
        if not a.same_model(b):
            raise DampError(f"{who} was collected from a different model than {ref} "
                            f"(sha256 {(b.model_sha256 or b.graph_sha256)[:12]} vs {(a.model_sha256 or a.graph_sha256)[:12]})")
        if a.input_name != b.input_name:
            raise DampError(f"{who} fed input {b.input_name!r} but {ref} fed {a.input_name!r}")
        if a.preprocessing != b.preprocessing:
            raise DampError(f"{who} used preprocessing {b.preprocessing!r} but {ref} used {a.preprocessing!r}")
    if first.feature_mode != other.feature_mode:
        raise DampError(f"{who} has feature mode {other.feature_mode!r} but {ref} has {first.feature_mode!r} "
                        f"(use the same --features for every shard)")
    if first.token_layouts != other.token_layouts:
        raise DampError(f"{who} found different token layouts than {ref} (a shard with fewer than 3 samples "
                        f"cannot probe them)")
    if first.gram_classes != other.gram_classes:
        def show(g):
            return "every class" if g is None else f"classes {g}"
        raise DampError(f"{who} kept second moments for {show(other.gram_classes)} but {ref} for "
                        f"{show(first.gram_classes)} (use the same --forget for every shard)")
    g1, l1 = _groups(first)
    g2, l2 = _groups(other)
    if l1 != l2 or [g.feature_dim for g in g1] != [g.feature_dim for g in g2]:
        raise DampError(f"{who} has different layers than {ref}")


def merge(shards: Sequence[Statistics]) -> Statistics:
    """Add the statistics of shards (float64, in shard order) into new Statistics.

    Refuses shards from different models, inputs, preprocessing, feature modes, token layouts or
    kept-Gram classes with a one-line DampError naming the shard. See the module docstring for
    when the result equals single-process statistics bit for bit.
    """
    shards = list(shards)
    if not shards:
        raise DampError("no statistics to merge")
    first = shards[0]
    for k, st in enumerate(shards[1:], start=1):
        _check_compatible(first, st, k)
    per_shard = [_groups(st)[0] for st in shards]
    _, layers = _groups(first)
    merged_groups = []
    for g, ls0 in enumerate(per_shard[0]):
        out = LayerStats(ls0.feature_dim)
        for groups in per_shard:
            ls = groups[g]
            for c in ls.rows:
                if c in out.sums:
                    out.sums[c] = out.sums[c] + ls.sums[c]
                    out.rows[c] += ls.rows[c]
                else:
                    out.sums[c], out.rows[c] = ls.sums[c].copy(), ls.rows[c]
            for c, gram in ls.grams.items():
                out.grams[c] = out.grams[c] + gram if c in out.grams else gram.copy()
            if ls.total_gram is not None:
                out.total_gram = ls.total_gram.copy() if out.total_gram is None else out.total_gram + ls.total_gram
        out.sums = {c: out.sums[c] for c in sorted(out.sums)}
        out.rows = {c: out.rows[c] for c in sorted(out.rows)}
        out.grams = {c: out.grams[c] for c in sorted(out.grams)}
        if first.gram_classes is None:
            out.canonical_total()
        merged_groups.append(out)
    samples: dict[int, int] = {}
    for st in shards:
        for c, n in st.samples.items():
            samples[c] = samples.get(c, 0) + n
    prov = None
    if first.provenance is not None:
        prov = Provenance(**asdict(first.provenance))
        prov.sources = [s for st in shards for s in st.provenance.sources]
    return Statistics({node: merged_groups[g] for node, g in layers.items()}, dict(sorted(samples.items())),
                      first.feature_mode, dict(first.token_layouts),
                      None if first.gram_classes is None else list(first.gram_classes), prov)


def load_and_merge(paths: Sequence[str | os.PathLike]) -> Statistics:
    """Load every statistics file and merge them (one file: loaded as is)."""
    if not paths:
        raise DampError("no statistics file given")
    shards = [load_statistics(p) for p in paths]
    return shards[0] if len(shards) == 1 else merge(shards)
