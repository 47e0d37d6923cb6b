"""Per-class float64 statistics of every editable operator's input, collected in one streamed pass."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Callable, Iterable, NamedTuple, Protocol

import numpy as np
import onnx

from onnx_damp.data.dataset import Dataset, class_batches, prefetch
from onnx_damp.ops.base import EditableOp
from onnx_damp.runtime.batching import batch_free_model
from onnx_damp.runtime.modelio import data_input
from onnx_damp.runtime.instrument import TOKEN_MODES, instrument, shift_terms
from onnx_damp.runtime.tokens import TokenLayout, batch_rows, probe_token_layouts, probed_one_row
from onnx_damp.runtime.predict import output_rows
from onnx_damp.runtime.session import add_outputs, input_spec, make_session, output_name, run_checked
from onnx_damp.stats.rows import KeptRows, can_spill
from onnx_damp.stats.statistics import LayerStats, Statistics



class Collector(Protocol):
    """What collects statistics: collect below, or stats.ray.ray_collect (the same arguments)."""

    def __call__(self, model: onnx.ModelProto, ops: list[EditableOp], data: Dataset,
                 gram_classes: Iterable[int] | None, batch_size: int = 128, device: str = "cpu",
                 feature_mode: str = "auto", input_name: str | None = None,
                 progress: Callable[[int], None] | None = None, layouts: dict[str, TokenLayout] | None = None, *,
                 outputs: bool = False, output: str | None = None) -> Statistics: ...


def collect(model: onnx.ModelProto, ops: list[EditableOp], data: Dataset, gram_classes: Iterable[int] | None,
            batch_size: int = 128, device: str = "cpu", feature_mode: str = "auto",
            input_name: str | None = None, progress: Callable[[int], None] | None = None,
            layouts: dict[str, TokenLayout] | None = None, precision: str = "float32",
            outputs: bool = False, output: str | None = None, wide_dim: int | None = None,
            rows_budget: int | None = None, spill: bool = True) -> Statistics:
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
    wide_dim: input widths above this (default WIDE_DIM, and ROW_WIDE_DIM for a layer read one row per image:
    one_row_wide) get sums and second moments within the span of the class prototypes instead of d x d Grams
    (see plan._plan_wide): from their input rows, kept through the pass where they are one row per image and
    fit ROWS_KEPT_BYTES (kept_row_inputs), else in a temporary file where its disk has room (stats.rows), else from a
    second pass over the data; given, it is the one limit for every layer. rows_budget: bytes of such rows kept in
    memory at most (default ROWS_KEPT_BYTES); spill: False never writes rows to a file (rows_budget=0 and
    spill=False: always a second pass).
    """
    model, layouts, wide, inst, taps, one_rows = statistics_graph(model, ops, data.x, feature_mode, input_name,
                                                                 device, layouts, precision, wide_dim)
    kept = kept_row_inputs([op for op in ops if op.node_name in wide], one_rows, len(data), rows_budget, spill,
                           itemsize=_row_itemsize(model, input_name))
    if kept:
        graph_inputs = {i.name for i in inst.graph.input}
        inst = add_outputs(inst, [t for t, _ in kept.values() if t not in graph_inputs])
    with ExitStack() as stack:
        stores = {name: (tensor, stack.enter_context(KeptRows(taps[name].feature_dim, len(data), spilled)))
                  for name, (tensor, spilled) in kept.items()}
        per_tap, samples, outs, rows = _stream(inst, taps, data, gram_classes, batch_size, device, input_name,
                                               progress, outputs, output, stores)
        bases = {name: prototype_basis(per_tap[taps[name].key]) for name in wide}
        for name, store in rows.items():  # wide layers whose rows were kept: their projected moments from those rows
            st = per_tap[taps[name].key]
            st.basis, st.projected = bases[name], store.projected(bases[name])
    rest = [name for name in wide if name not in rows]
    if rest:  # second pass, the other wide layers: second moments of the rows projected on the prototypes' span
        inst, wtaps = instrument(model, [op for op in ops if op.node_name in rest], feature_mode, layouts,
                                 "float64", wide={name: bases[name] for name in rest})
        projected, _, _, _ = _stream(inst, wtaps, data, None, batch_size, device, input_name, None, False, None)
        for name in rest:
            st = per_tap[taps[name].key]
            st.basis, st.projected = bases[name], projected[wtaps[name].key]
    keep = None if gram_classes is None else set(int(c) for c in gram_classes)
    return Statistics({name: per_tap[t.key] for name, t in taps.items()}, samples, feature_mode, layouts,
                      None if keep is None else sorted(keep), outputs=outs)


WIDE_DIM = 4096  # above this input width a layer gets no d x d Gram (128 MiB per class in float64)
# above this width a layer read one row per image (a Gemm, a MatMul on [N, d]) gets none either: its d x d
# moments would rest on about as many rows as features (2,400 on cifar10_winml's 2,400-wide head), their extra
# directions on fewer forget rows than features, and they cost more than the model's own pass (docs/method.md)
ROW_WIDE_DIM = 2048


def is_wide(op: EditableOp, feature_mode: str = "auto", limit: int = WIDE_DIM) -> bool:
    """Whether op's input space is too wide for d x d statistics (patch mode's unfolded width counts)."""
    from onnx_damp.runtime.instrument import patch_dim, unfolds
    d = patch_dim(op) if unfolds(op, feature_mode) else op.feature_dim
    return d > limit


def one_row_inputs(model: onnx.ModelProto, ops: list[EditableOp], limit: int, x, input_name: str | None = None,
                   device: str = "cpu") -> set[str]:
    """The inputs of ops (not Convs, over limit features) that are [batch, d], one row per image: by shape
    inference (runtime.tokens.batch_rows), else by running the model on 2 and 3 images (probed_one_row, for a
    first dim inference leaves open). Only when some op is that wide; an input neither shows is not counted (its
    layer keeps d x d moments up to WIDE_DIM)."""
    from onnx_damp.ops.registry import adapter
    names = list(dict.fromkeys(op.input_name for op in ops if not adapter(op).spatial and op.feature_dim > limit))
    if not names:
        return set()
    rows = batch_rows(model, names, input_name)
    rest = [n for n in names if n not in rows]
    return rows | (probed_one_row(model, rest, x, input_name, device) if rest else set())


def one_row_wide(op: EditableOp, rows: set[str], limit: int = ROW_WIDE_DIM) -> bool:
    """Whether op reads one row per image (its input among rows, one_row_inputs) of more than limit features:
    the wide path's statistics then (sums, and moments within the prototypes' span)."""
    return op.input_name in rows and op.feature_dim > limit


# wide layers' input rows kept in memory through the statistics pass, at most this in all (sized before the pass);
# the others are spilled to a temporary file where its disk has room (stats.rows), else take a second pass:
# memory stays within this of flat in the data (cifar10_winml's 2,400-wide rows: 23 MB for 2,400 images, 206 MB
# for 21,440; mnist_burn's 11,616-wide ones 111 MB for 2,400)
ROWS_KEPT_BYTES = 128 << 20


def _row_itemsize(model: onnx.ModelProto, input_name: str | None) -> int:
    """Bytes a kept row value takes: 8 for a model fed float64 (its activations are float64), else 4 (float32;
    float16 rows are kept as float32)."""
    inp = data_input(model, input_name)
    return 8 if inp is not None and inp.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE else 4


def kept_row_inputs(wide_ops: list[EditableOp], rows: set[str], n: int, budget: int | None = None,
                    spill: bool = True, directory: str | None = None,
                    itemsize: int = 4) -> dict[str, tuple[str, bool]]:
    """{node: (input tensor, spilled)} of the wide layers whose input rows the statistics pass keeps (n x d values
    of itemsize bytes): layers read one row per image (their [N, d] input among rows, one_row_inputs; a Gemm without
    transA). In order, in memory while the total stays within budget, the others in a temporary file (spilled)
    while its disk has room (rows.can_spill; spill=False: never). Their moments within the prototypes' span then
    come from those rows (KeptRows.projected), not from a second pass over the data."""
    out, used, spilled, budget = {}, 0, 0, ROWS_KEPT_BYTES if budget is None else budget
    for op in wide_ops:
        if not one_row_wide(op, rows, 0) or op.trans_a:
            continue
        size = itemsize * n * op.feature_dim
        if used + size <= budget:
            out[op.node_name], used = (op.input_name, False), used + size
        elif spill and can_spill(spilled + size, directory):
            out[op.node_name], spilled = (op.input_name, True), spilled + size
    return out


def prototype_basis(st: LayerStats) -> np.ndarray:
    """Orthonormal basis [d, k] of the span of every class prototype (k <= number of classes).

    Every forget direction DAMP builds from prototypes (retain-span residuals) lies in this span, so
    second moments within it are all the probe needs: k x k instead of d x d.
    """
    from onnx_damp.method.projection import orthonormal_basis
    means = np.stack([st.mean(c) for c in sorted(st.sums)], axis=1)
    return orthonormal_basis(means)


class StatisticsGraph(NamedTuple):
    """What collect's first pass runs: the model (a batch fixed at 1 freed), its token layouts, the wide layers
    (sums only in this pass) and the instrumented copy with its taps."""

    model: onnx.ModelProto
    layouts: dict[str, TokenLayout]
    wide: dict[str, None]
    instrumented: onnx.ModelProto
    taps: dict
    one_rows: set[str]  # inputs read one row per image among those wide enough to matter (one_row_inputs)


def statistics_graph(model: onnx.ModelProto, ops: list[EditableOp], x, feature_mode: str = "auto",
                     input_name: str | None = None, device: str = "cpu",
                     layouts: dict[str, TokenLayout] | None = None, precision: str = "float32",
                     wide_dim: int | None = None) -> StatisticsGraph:
    """The graph collect streams the data through (its arguments as collect's; x: the data's inputs, for the
    probes), so that a benchmark measures the same graph (bench/stats_overhead.py)."""
    free, _ = batch_free_model(model, x, input_name, device)  # batch fixed at 1: run a symbolic batch
    model = free if free is not None else model
    if feature_mode not in TOKEN_MODES:
        layouts = {}
    elif layouts is None:
        layouts = probe_token_layouts(model, ops, x, input_name, device)
    limit, row_limit = (WIDE_DIM, ROW_WIDE_DIM) if wide_dim is None else (wide_dim, wide_dim)
    one_rows = one_row_inputs(model, ops, min(limit, row_limit), x, input_name, device)
    wide = {op.node_name: None for op in ops
            if is_wide(op, feature_mode, limit) or one_row_wide(op, one_rows, row_limit)}
    inst, taps = instrument(model, ops, feature_mode, layouts, "float64" if device == "cuda" else precision,
                            wide=wide)
    return StatisticsGraph(model, layouts, wide, inst, taps, one_rows)


def _stream(inst: onnx.ModelProto, taps, data: Dataset, gram_classes, batch_size: int, device: str,
            input_name: str | None, progress, outputs: bool, output: str | None,
            row_inputs: dict[str, tuple[str, KeptRows]] | None = None):
    """Run inst over data in single-class batches; per-tap statistics, per-class counts, kept outputs, and the
    stores of row_inputs ({node: (an [N, d] tensor inst outputs, where its rows go)}) by node, filled (a node
    whose tensor is not [batch, d] is left out: collect gives it the second pass)."""
    sess = make_session(inst, device)  # full optimisation: a node whose output is a graph output is never fused away
    spec = input_spec(sess, input_name)
    x = data.x.astype(spec.dtype, copy=False)
    unique = {t.key: t for t in taps.values()}
    fetch = [name for t in unique.values() for name in (t.sum_name, t.gram_name, t.shape_name, t.shift_name) if name]
    out_name = output_name(sess, output, skip=set(fetch)) if outputs else None
    fetch += [out_name] if out_name else []
    row_inputs = dict(row_inputs or {})
    fetch += [t for t in dict.fromkeys(t for t, _ in row_inputs.values()) if t not in fetch and t != spec.name]
    kept: np.ndarray | None = None
    per_tap = {key: LayerStats(t.feature_dim) for key, t in unique.items()}
    keep = None if gram_classes is None else set(int(c) for c in gram_classes)
    samples: dict[int, int] = {}
    batches = class_batches(data.y, batch_size, fixed_batch=spec.fixed_batch)
    pending = _ShiftCorrections(per_tap, keep)
    for (c, idx, real), xb in prefetch(batches, lambda b: x[b[1]]):
        if c != pending.cls:  # batches come class by class: the previous class's Grams are complete
            pending.flush()
            pending.cls = c
        got = dict(zip(fetch, run_checked(sess, fetch, {spec.name: xb})))
        if out_name:
            rows = output_rows(got[out_name], out_name, len(idx))
            if kept is None:  # the output's own float type holds its values exactly, at half the memory of float64
                raw = np.asarray(got[out_name]).dtype
                kept = np.zeros((len(data), rows.shape[1]), dtype=raw if raw.kind == "f" else np.float64)
            kept[idx[:real]] = rows[:real]
        for name, (tensor, store) in list(row_inputs.items()):
            if not _keep_rows(store, c, xb if tensor == spec.name else got[tensor], real):
                row_inputs.pop(name)
        for key, t in unique.items():
            n = int(got[t.shape_name][0])
            if t.gram_name is None:
                per_tap[key].add(c, got[t.sum_name], None, n, False)
                continue
            s, gram = got[t.sum_name], got[t.gram_name]
            if t.shift_name is not None:
                s, m, u = shift_terms(s, n, got[t.shift_name])
                pending.add(key, m, u)
            per_tap[key].add(c, s, gram, n, keep is None or c in keep, total=keep is not None)
        samples[c] = samples.get(c, 0) + real
        if progress:
            progress(real)
    pending.finish()
    if keep is None:
        for st in per_tap.values():
            st.canonical_total()
    return per_tap, samples, kept, {name: store for name, (_, store) in row_inputs.items()}


def _keep_rows(store: KeptRows, c: int, value, real: int) -> bool:
    """Append one batch's real rows of class c to store; False (the store released: collect gives the layer the
    second pass) when the tensor is not [batch, d] or the rows cannot be written (a disk that filled up since
    kept_row_inputs looked)."""
    value = np.asarray(value)
    if value.ndim != 2 or value.shape[1] != store.d or value.shape[0] < real:
        store.close()
        return False
    try:
        store.append(c, value[:real])
    except OSError:
        store.close()
        return False
    return True


class _ShiftCorrections:
    """The float32 shift terms m_b, u_b of the current class's batches per tap: sum_b (m_b u_b^T + u_b m_b^T)
    joins the class's Gram and the total as one product M U^T per class (flush), so float32 reductions cost
    little on the host. Terms of classes whose Gram is not kept feed only the total: they wait for one product
    at the end (finish; a 2,400-wide Gemm input: one d x d product and sum instead of one per class). A list
    is folded in whenever it holds cap terms, so memory stays flat in the data."""

    def __init__(self, per_tap: dict, keep: set | None, cap: int = 256) -> None:
        self.per_tap, self.keep, self.cap = per_tap, keep, cap
        self.cls: int | None = None
        self.terms: dict[str, tuple[list, list]] = {}
        self.total_only: dict[str, tuple[list, list]] = {}

    def _kept(self) -> bool:
        return self.keep is None or self.cls in self.keep

    def add(self, key: str, m: np.ndarray, u: np.ndarray) -> None:
        kept = self._kept()
        ms, us = (self.terms if kept else self.total_only).setdefault(key, ([], []))
        ms.append(m)
        us.append(u)
        if len(ms) >= self.cap:
            self.per_tap[key].add_gram(self.cls if kept else None, _symmetric_sum(ms, us), kept,
                                       total=self.keep is not None)
            ms.clear()
            us.clear()

    def flush(self) -> None:
        """Fold the current class's terms into its kept Gram and the total (before the next class)."""
        for key, (ms, us) in self.terms.items():
            if ms:
                self.per_tap[key].add_gram(self.cls, _symmetric_sum(ms, us), True, total=self.keep is not None)
        self.terms = {}

    def finish(self) -> None:
        """Fold everything left, the total-only terms included (after the last batch)."""
        self.flush()
        for key, (ms, us) in self.total_only.items():
            if ms:
                self.per_tap[key].add_gram(None, _symmetric_sum(ms, us), False)
        self.total_only = {}


def _symmetric_sum(ms: list, us: list) -> np.ndarray:
    """sum_b (m_b u_b^T + u_b m_b^T) as M U^T plus its transpose (exactly symmetric)."""
    corr = np.stack(ms, axis=1) @ np.stack(us, axis=0)
    return corr + corr.T
