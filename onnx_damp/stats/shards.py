"""Merging per-shard statistics (calibration at scale); the file format is in statistics.py.

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

"""
from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

from onnx_damp.errors import DampError
from onnx_damp.stats.statistics import LayerStats, Provenance, Statistics, _groups, _label


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
