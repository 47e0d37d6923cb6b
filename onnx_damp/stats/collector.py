"""Per-class float64 statistics of every editable operator's input, collected in one streamed pass."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import onnx

from onnx_damp.data.dataset import Dataset, class_batches, prefetch
from onnx_damp.ops.base import EditableOp
from onnx_damp.runtime.instrument import TOKEN_MODES, instrument, restore_shift
from onnx_damp.runtime.tokens import TokenLayout, probe_token_layouts
from onnx_damp.runtime.predict import output_rows
from onnx_damp.runtime.session import input_spec, make_session, output_name, run_checked

if TYPE_CHECKING:
    from onnx_damp.stats.shards import Provenance


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

    def add(self, c: int, s: np.ndarray, gram: np.ndarray | None, n: int, keep_gram: bool) -> None:
        d = self.feature_dim
        if c not in self.sums:
            self.sums[c], self.rows[c] = np.zeros(d), 0
        self.sums[c] += s
        self.rows[c] += n
        if gram is None:
            return
        if keep_gram:
            self.grams[c] = self.grams.get(c, np.zeros((d, d))) + gram
        self.total_gram = gram.copy() if self.total_gram is None else self.total_gram + gram

    def canonical_total(self) -> None:
        """total_gram as the sum of the per-class Grams in class order, when every class has one.

        Then the total does not depend on how batches were grouped into shards: statistics merged
        from class-aligned shards equal single-process ones bit for bit (see shards.merge).
        """
        if self.grams and set(self.grams) == set(self.rows):
            total = np.zeros((self.feature_dim, self.feature_dim))
            for c in sorted(self.grams):
                total += self.grams[c]
            self.total_gram = total

    def mean(self, c: int) -> np.ndarray:
        return self.sums[c] / self.rows[c]

    def group_moments(self, classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean, uncentred second moment and row count of the union of classes.

        Classes without a kept Gram are only allowed as the complement of those with one.
        """
        n = sum(self.rows[c] for c in classes)
        s = sum(self.sums[c] for c in classes)
        if all(c in self.grams for c in classes):
            g = sum(self.grams[c] for c in classes)
        else:
            others = [c for c in self.rows if c not in classes]
            if not all(c in self.grams for c in others):
                raise ValueError("second moments are known only for the kept classes and their complement")
            g = self.total_gram - sum((self.grams[c] for c in others), np.zeros_like(self.total_gram))
        return s / n, g / n, n


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
        """Write these statistics to an .npz (float64 arrays; metadata as JSON); see shards.py."""
        from onnx_damp.stats.shards import save_statistics
        return save_statistics(self, path)

    @classmethod
    def load(cls, path) -> "Statistics":
        """Read statistics written by save (never unpickles)."""
        from onnx_damp.stats.shards import load_statistics
        return load_statistics(path)


def collect(model: onnx.ModelProto, ops: list[EditableOp], data: Dataset, gram_classes: Iterable[int] | None,
            batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
            input_name: str | None = None, progress: Callable[[int], None] | None = None,
            layouts: dict[str, TokenLayout] | None = None, precision: str = "float32",
            outputs: bool = False, output: str | None = None, wide_dim: int | None = None) -> Statistics:
    """Stream data through an instrumented copy of model in single-class batches and reduce per batch.

    gram_classes: classes whose second moments are kept (the forget classes); None keeps every class's
    (statistics that serve any forget set, at classes x d^2 floats per layer).
    layouts: token layouts found earlier for the same graph (edits change weights, never layouts);
    probed here when not given and feature_mode is "auto".
    precision: arithmetic of the in-graph per-batch reductions ("float32": onnxruntime's sgemm on rows
    centred on a shift near their mean, the default; "float64": about 1.7x slower on a CNN, exact to
    float64 rounding). float64 is always used for class-token and pooled taps (one row per image: it costs
    nothing), float64 weights, opsets below 12, and --device cuda (where float32 GEMMs may run in TF32);
    batches are always accumulated in float64.
    wide_dim: input widths above this (default WIDE_DIM) get sums and, in a second pass over the data, second
    moments within the span of the class prototypes instead of d x d Grams (see damp._plan_wide).
    """
    if feature_mode not in TOKEN_MODES:
        layouts = {}
    elif layouts is None:
        layouts = probe_token_layouts(model, ops, data.x, input_name, device)
    wide = {op.node_name: None for op in ops if is_wide(op, feature_mode, WIDE_DIM if wide_dim is None else wide_dim)}
    inst, taps = instrument(model, ops, feature_mode, layouts, "float64" if device == "cuda" else precision,
                            wide=wide)
    per_tap, samples, kept = _stream(inst, taps, data, gram_classes, batch_size, device, input_name, progress,
                                     outputs, output)
    if wide:  # second pass, wide layers only: second moments of the rows projected on the class prototypes' span
        bases = {name: prototype_basis(per_tap[taps[name].key]) for name in wide}
        inst, wtaps = instrument(model, [op for op in ops if op.node_name in wide], feature_mode, layouts,
                                 "float64", wide=bases)
        projected, _, _ = _stream(inst, wtaps, data, None, batch_size, device, input_name, None, False, None)
        for name in wide:
            st = per_tap[taps[name].key]
            st.basis, st.projected = bases[name], projected[wtaps[name].key]
    keep = None if gram_classes is None else set(int(c) for c in gram_classes)
    return Statistics({name: per_tap[t.key] for name, t in taps.items()}, samples, feature_mode, layouts,
                      None if keep is None else sorted(keep), outputs=kept)


WIDE_DIM = 4096  # above this input width a layer gets no d x d Gram (128 MiB per class in float64)


def is_wide(op: EditableOp, feature_mode: str = "auto", limit: int = WIDE_DIM) -> bool:
    """Whether op's input space is too wide for d x d statistics (patch mode's unfolded width counts)."""
    from onnx_damp.runtime.instrument import patch_dim, unfolds
    d = patch_dim(op) if unfolds(op, feature_mode) else op.feature_dim
    return d > limit


def prototype_basis(st: LayerStats) -> np.ndarray:
    """Orthonormal basis [d, k] of the span of every class prototype (k <= number of classes).

    Every forget direction DAMP builds from prototypes (retain-span residuals) lies in this span, so
    second moments within it are all the probe needs: k x k instead of d x d.
    """
    from onnx_damp.method.projection import orthonormal_basis
    means = np.stack([st.mean(c) for c in sorted(st.sums)], axis=1)
    return orthonormal_basis(means)


def _stream(inst: onnx.ModelProto, taps, data: Dataset, gram_classes, batch_size: int, device: str,
            input_name: str | None, progress, outputs: bool, output: str | None):
    """Run inst over data in single-class batches; per-tap statistics, per-class counts, kept outputs."""
    sess = make_session(inst, device)  # full optimisation: a node whose output is a graph output is never fused away
    spec = input_spec(sess, input_name)
    x = data.x.astype(spec.dtype, copy=False)
    unique = {t.key: t for t in taps.values()}
    out_name = output_name(sess, output) if outputs else None
    fetch = [name for t in unique.values() for name in (t.sum_name, t.gram_name, t.shape_name, t.shift_name) if name]
    fetch += [out_name] if out_name else []
    kept: np.ndarray | None = None
    per_tap = {key: LayerStats(t.feature_dim) for key, t in unique.items()}
    keep = None if gram_classes is None else set(int(c) for c in gram_classes)
    samples: dict[int, int] = {}
    batches = class_batches(data.y, batch_size, fixed_batch=spec.fixed_batch)
    for (c, idx, real), xb in prefetch(batches, lambda b: x[b[1]]):
        got = dict(zip(fetch, run_checked(sess, fetch, {spec.name: xb})))
        if out_name:
            rows = output_rows(got[out_name], out_name, len(idx))
            if kept is None:  # the output's own float type holds its values exactly, at half the memory of float64
                raw = np.asarray(got[out_name]).dtype
                kept = np.zeros((len(data), rows.shape[1]), dtype=raw if raw.kind == "f" else np.float64)
            kept[idx[:real]] = rows[:real]
        for key, t in unique.items():
            n = int(got[t.shape_name][0])
            if t.gram_name is None:
                per_tap[key].add(c, got[t.sum_name], None, n, False)
                continue
            s, gram = restore_shift(got[t.sum_name], got[t.gram_name], n, got.get(t.shift_name))
            per_tap[key].add(c, s, gram, n, keep is None or c in keep)
        samples[c] = samples.get(c, 0) + real
        if progress:
            progress(real)
    if keep is None:
        for st in per_tap.values():
            st.canonical_total()
    return per_tap, samples, kept
