"""DAMP per layer: from collected statistics to a forget subspace Q and a strength alpha, then the edit."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from onnx_damp.method import projection as pj
from onnx_damp.ops.base import EditableOp
from onnx_damp.stats.statistics import LayerStats, Statistics
from onnx_damp.ops.registry import adapter, weight_matrix
from onnx_damp.ops.weights import (GraphIndex, QuantStore, effective_weight, give_own_copy, index_graph, store_weight,
                                   weight_ref)


@dataclass
class LayerPlan:
    """What DAMP does to one operator, and why."""

    op: EditableOp
    q: np.ndarray            # (d, r) orthonormal forget subspace
    alpha: float
    separation: float        # Fisher probe Mahalanobis delta, forget vs retain, within span(Q)
    separability: float      # 2 * balanced accuracy - 1 of that probe, in [0, 1); alpha = this
    extra_rank: int = 0      # directions added beyond the prototype residuals
    layer_separability: float | None = 0.0  # the same probe on the layer's whole input space (reported; None: not
    #                                          computed, MethodOptions.layer_probe)
    residual_share: float = 0.0      # min ||d|| / ||mu_f||: forget prototype share outside the retain span
    relative_change: float = 0.0
    own_copy: str | None = None
    note: str = ""
    quant_error: float | None = None  # QDQ weight: ||W_requant - W_edited||_F / ||W_edited - W||_F
    clipped: int | None = None        # QDQ weight: requantised values clipped to the integer range
    rows: tuple[int, ...] | None = None  # edit only these output rows (the head's forget classes); None: all

    @property
    def rank(self) -> int:
        return int(self.q.shape[1])

    def to_dict(self) -> dict:
        return {"node": self.op.node_name, "op_type": self.op.op_type, "weight": self.op.weight_name,
                "depth_index": self.op.depth_index, "depth": round(self.op.depth, 4),
                "feature_dim": self.op.feature_dim, "rank": self.rank, "extra_rank": self.extra_rank,
                "separation": self.separation, "separability": self.separability,
                "layer_separability": self.layer_separability, "residual_share": self.residual_share,
                "alpha": self.alpha,
                "relative_change": self.relative_change, "own_copy": self.own_copy, "note": self.note,
                "scope": self.op.scope, "quant_error": self.quant_error, "clipped": self.clipped,
                "rows": list(self.rows) if self.rows is not None else None}


def plan_layer(op: EditableOp, st: LayerStats, forget: Sequence[int], retain: Sequence[int],
               extra_directions: bool = True, extra_bar: str = "energy",
               layer_sep: float | None = None, layer_probe: bool = True) -> LayerPlan:
    """Compute Q and alpha for one layer from its per-class statistics.

    alpha is the separability of the Fisher probe restricted to span(Q): how well forget and retain
    rows can be told apart using only the directions the edit removes. layer_sep: the layer's whole-space
    probe separability when already known (another plan from the same statistics): a d x d solve saved.
    layer_probe=False: the whole-space probe is not computed where layer_sep is not given (it stays None).
    """
    return plan_layer_variants(op, st, forget, retain, (extra_directions,), extra_bar, layer_sep,
                               layer_probe)[extra_directions]


def plan_layer_variants(op: EditableOp, st: LayerStats, forget: Sequence[int], retain: Sequence[int],
                        extras: Sequence[bool], extra_bar: str = "energy",
                        layer_sep: float | None = None, layer_probe: bool = True) -> dict[bool, LayerPlan]:
    """plan_layer for each extra-directions flag in extras, from one computation of the layer's moments
    (the d x d part of the work: on a 2,400-wide input, most of a plan)."""
    if st.wide:
        wide = _plan_wide(op, st, forget, retain, layer_probe)
        return {e: dataclasses.replace(wide) for e in extras}
    mu_f = np.stack([st.mean(c) for c in forget], axis=1)
    mu_r = np.stack([st.mean(c) for c in retain], axis=1)
    residuals = pj.retain_residuals(mu_f, mu_r)
    q = pj.residual_basis(residuals, mu_f)
    mf, sf, n_f = st.group_moments(forget)
    mr, sr, n_r = st.group_moments(retain)
    cf, cr = _centred(sf, mf), _centred(sr, mr)
    if layer_sep is None and layer_probe:  # reported only: Cholesky form from LAYER_PROBE_DENSE_MAX features
        layer_sep = pj.probe_separability(pj.mahalanobis_separation(mf, cf, mr, cr,
                                                                    dense_max=pj.LAYER_PROBE_DENSE_MAX))
    share = pj.residual_share(residuals, mu_f)
    out = {}
    for extra_directions in extras:
        if q.shape[1] == 0:
            out[extra_directions] = LayerPlan(op, q, 0.0, 0.0, 0.0, layer_separability=layer_sep,
                                              residual_share=share,
                                              note="forget prototype lies in the retain span: nothing to remove")
            continue
        qe, extra = q, 0
        if extra_directions:
            qe = pj.extend_subspace(q, mu_r, sf, sr, bar=extra_bar, c_f=cf, c_r=cr, forget_rows=n_f,
                                    retain_rows=n_r)
            extra = qe.shape[1] - q.shape[1]
        delta = pj.mahalanobis_separation(qe.T @ mf, qe.T @ cf @ qe, qe.T @ mr, qe.T @ cr @ qe)
        sep = pj.probe_separability(delta)
        out[extra_directions] = LayerPlan(op, qe, pj.alpha_from_separability(sep), delta, sep, extra,
                                          layer_separability=layer_sep, residual_share=share)
    return out


def _centred(second: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """second - mean mean^T (a covariance from an uncentred moment) in one new d x d array, not two."""
    out = np.multiply.outer(mean, mean)
    np.subtract(second, out, out=out)
    return out


def _plan_wide(op: EditableOp, st: LayerStats, forget: Sequence[int], retain: Sequence[int],
               layer_probe: bool = True) -> LayerPlan:
    """plan_layer for a layer too wide for d x d Grams (stats.WIDE_DIM): Q from the d-dimensional prototypes,
    the probe from second moments within U = span(all prototypes), where Q lies; no extra directions.

    With Q = U A (A = U^T Q), Q^T m = A^T (U^T m) and Q^T C Q = A^T (U^T C U) A, so alpha is exact; the
    layer separability is the probe's within span(U), not the whole input space.
    """
    mu_f = np.stack([st.mean(c) for c in forget], axis=1)
    mu_r = np.stack([st.mean(c) for c in retain], axis=1)
    residuals = pj.retain_residuals(mu_f, mu_r)
    q = pj.residual_basis(residuals, mu_f)
    share = pj.residual_share(residuals, mu_f)
    proj = st.projected
    mf, sf, _ = proj.group_moments(forget)
    mr, sr, _ = proj.group_moments(retain)
    cf, cr = _centred(sf, mf), _centred(sr, mr)
    layer_sep = pj.probe_separability(pj.mahalanobis_separation(mf, cf, mr, cr)) if layer_probe else None
    note = f"wide input ({st.feature_dim} features): second moments within the {st.basis.shape[1]}-dimensional " \
           "span of the class prototypes, no extra directions"
    if q.shape[1] == 0:
        return LayerPlan(op, q, 0.0, 0.0, 0.0, layer_separability=layer_sep, residual_share=share,
                         note="forget prototype lies in the retain span: nothing to remove; " + note)
    a = st.basis.T @ q
    delta = pj.mahalanobis_separation(a.T @ mf, a.T @ cf @ a, a.T @ mr, a.T @ cr @ a)
    sep = pj.probe_separability(delta)
    return LayerPlan(op, q, pj.alpha_from_separability(sep), delta, sep, 0, layer_separability=layer_sep,
                     residual_share=share, note=note)


def plan(ops: list[EditableOp], stats: Statistics, forget: Sequence[int], retain: Sequence[int],
         extra_directions: bool = True, extra_bar: str = "energy",
         like: "list[LayerPlan] | None" = None, progress=None, layer_probe: bool = True) -> list[LayerPlan]:
    """One LayerPlan per operator. like: plans from the same statistics and classes, whose layer
    separabilities are reused (they do not depend on the extra directions). progress(1) after each layer.
    layer_probe=False: no whole-space layer separability (None) where like does not give one."""
    return plan_variants(ops, stats, forget, retain, (extra_directions,), extra_bar, like, progress,
                         layer_probe)[extra_directions]


def plan_variants(ops: list[EditableOp], stats: Statistics, forget: Sequence[int], retain: Sequence[int],
                  extras: Sequence[bool], extra_bar: str = "energy", like: "list[LayerPlan] | None" = None,
                  progress=None, layer_probe: bool = True) -> dict[bool, list[LayerPlan]]:
    """plan for each extra-directions flag in extras, each layer's moments computed once for all of them."""
    seps = [p.layer_separability for p in like] if like is not None else [None] * len(ops)
    out: dict[bool, list[LayerPlan]] = {e: [] for e in extras}
    for op, sep in zip(ops, seps):
        for e, p in plan_layer_variants(op, stats.layers[op.node_name], forget, retain, extras, extra_bar,
                                        sep, layer_probe).items():
            out[e].append(p)
        if progress is not None:
            progress(1)
    return out


def apply(model: onnx.ModelProto, plans: list[LayerPlan], like: GraphIndex | None = None) -> None:
    """Edit the weights of model in place: W <- W (I - alpha Q Q^T) in float64, cast back to the source dtype.

    The edit is written to the weight's source constant through the inverse of any Transpose/Reshape/Cast
    chain; a quantised (QDQ) weight is requantised with its own scale and zero point, and what that loses is
    recorded in the plan. A weight whose source or chain also feeds other nodes is first given its own
    (float) initializer copy. like: an index of the graph model's is an unedited copy of (GraphIndex.for_copy).
    """
    gi = like.for_copy(model.graph) if like is not None else index_graph(model.graph)
    for p in plans:
        if p.rank == 0 or p.alpha == 0.0:
            continue
        ref = weight_ref(gi, p.op)  # an earlier pass may have given the node its own copy
        w = effective_weight(gi, ref)
        if ref.dequant is None and p.rows is None and _chunkable(p.op, w, p.q):
            new, change, norm = edit_weight_chunked(p.op, w, p.q, p.alpha)
        else:
            mat = w.astype(np.float64)
            new = edit_weight(p.op, mat, p.q, p.alpha, p.rows)
            change, norm = float(np.linalg.norm(new - mat)), float(np.linalg.norm(mat))
            del mat
        p.relative_change = change / max(norm, 1e-300)
        if ref.exclusive:
            _record_quantisation(p, store_weight(gi, ref, new), change)
        else:
            p.own_copy = give_own_copy(gi, p.op, new.astype(w.dtype))
            if ref.dequant is not None:
                p.note = "; ".join(filter(None, [p.note, "shared quantised weight: own copy stored as float"]))


def _record_quantisation(p: LayerPlan, stored: QuantStore | None, edit_norm: float) -> None:
    """Put the requantisation error (relative to the edit's size) and the clipped count in the plan."""
    if stored is None:
        return
    p.quant_error = stored.error / edit_norm if edit_norm > 0 else 0.0
    p.clipped = stored.clipped


CHUNK_BYTES = 256 << 20  # weights above this size are edited in row blocks (float64 per block only)


def _chunkable(op: EditableOp, w: np.ndarray, q: np.ndarray) -> bool:
    """Large float Gemm/MatMul weights are edited block by block so a float64 copy never exists whole."""
    return (w.nbytes > CHUNK_BYTES and adapter(op).chunkable and np.issubdtype(w.dtype, np.floating)
            and q.shape[0] == op.feature_dim)


def edit_weight_chunked(op: EditableOp, w: np.ndarray, q: np.ndarray, alpha: float,
                        rows: int = 1 << 16) -> tuple[np.ndarray, float, float]:
    """edit_weight for a large Gemm/MatMul weight, in blocks of rows of its [rows, in] matrix.

    Each block is computed in float64 and cast back to w's dtype, exactly as the whole-matrix edit would
    be; returns the edited weight (w's dtype and layout), ||W' - W||_F and ||W||_F (both in float64).
    """
    new = np.empty_like(w)
    src, dst = weight_matrix(op, w), weight_matrix(op, new)  # views: Gemm/MatMul matrices are (transposed) views
    change = norm = 0.0
    for start in range(0, src.shape[0], rows):
        block = src[start:start + rows].astype(np.float64)
        edited = pj.edit_matrix(block, q, alpha)
        change += float(np.sum((edited - block) ** 2))
        norm += float(np.sum(block ** 2))
        dst[start:start + rows] = edited
    return new, change ** 0.5, norm ** 0.5


def edit_weight(op: EditableOp, w: np.ndarray, q: np.ndarray, alpha: float,
                rows: "Sequence[int] | None" = None) -> np.ndarray:
    """W (I - alpha Q Q^T) on op's input features, in the weight's own layout (float64); rows: only those
    output rows (Gemm/MatMul: rows of the [outputs, inputs] matrix), the rest unchanged.

    The operator's adapter lays the weight out as input-feature matrices (per group for a grouped Conv, in
    the unfolded patch space for a patch-mode Q; see OpAdapter.map_inputs) and puts the result back.
    """
    if rows is not None:
        return adapter(op).map_inputs(op, w, q, lambda mat, qq: pj.edit_rows(mat, qq, alpha, rows))
    return adapter(op).map_inputs(op, w, q, lambda mat, qq: pj.edit_matrix(mat, qq, alpha))
