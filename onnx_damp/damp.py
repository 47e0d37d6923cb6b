"""DAMP per layer: from collected statistics to a forget subspace Q and a strength alpha, then the edit."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from . import projection as pj
from .graph import EditableOp, current_weight_name, give_own_copy, matrix_to_weight, read_initializer, weight_matrix, write_initializer
from .stats import LayerStats, Statistics


@dataclass
class LayerPlan:
    """What DAMP does to one operator, and why."""

    op: EditableOp
    q: np.ndarray            # (d, r) orthonormal forget subspace
    alpha: float
    separation: float        # Fisher probe Mahalanobis delta, forget vs retain, within span(Q)
    separability: float      # 2 * balanced accuracy - 1 of that probe, in [0, 1); alpha = this
    extra_rank: int = 0      # directions added beyond the prototype residuals
    layer_separability: float = 0.0  # the same probe on the layer's whole input space (reported)
    residual_share: float = 0.0      # min ||d|| / ||mu_f||: forget prototype share outside the retain span
    relative_change: float = 0.0
    own_copy: str | None = None
    note: str = ""

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
                "relative_change": self.relative_change, "own_copy": self.own_copy, "note": self.note}


def plan_layer(op: EditableOp, st: LayerStats, forget: Sequence[int], retain: Sequence[int],
               extra_directions: bool = True) -> LayerPlan:
    """Compute Q and alpha for one layer from its per-class statistics.

    alpha is the separability of the Fisher probe restricted to span(Q): how well forget and retain
    rows can be told apart using only the directions the edit removes.
    """
    mu_f = np.stack([st.mean(c) for c in forget], axis=1)
    mu_r = np.stack([st.mean(c) for c in retain], axis=1)
    residuals = pj.retain_residuals(mu_f, mu_r)
    q = pj.residual_basis(residuals, mu_f)
    mf, sf, _ = st.group_moments(forget)
    mr, sr, _ = st.group_moments(retain)
    cf, cr = sf - np.outer(mf, mf), sr - np.outer(mr, mr)
    layer_sep = pj.probe_separability(pj.mahalanobis_separation(mf, cf, mr, cr))
    share = pj.residual_share(residuals, mu_f)
    if q.shape[1] == 0:
        return LayerPlan(op, q, 0.0, 0.0, 0.0, layer_separability=layer_sep, residual_share=share,
                         note="forget prototype lies in the retain span: nothing to remove")
    extra = 0
    if extra_directions:
        q2 = pj.extend_subspace(q, mu_r, sf, sr)
        extra, q = q2.shape[1] - q.shape[1], q2
    delta = pj.mahalanobis_separation(q.T @ mf, q.T @ cf @ q, q.T @ mr, q.T @ cr @ q)
    sep = pj.probe_separability(delta)
    return LayerPlan(op, q, pj.alpha_from_separability(sep), delta, sep, extra, layer_separability=layer_sep,
                     residual_share=share)


def plan(ops: list[EditableOp], stats: Statistics, forget: Sequence[int], retain: Sequence[int],
         extra_directions: bool = True) -> list[LayerPlan]:
    return [plan_layer(op, stats.layers[op.node_name], forget, retain, extra_directions) for op in ops]


def apply(model: onnx.ModelProto, plans: list[LayerPlan]) -> None:
    """Edit the weights of model in place: W <- W (I - alpha Q Q^T) in float64, cast back to the weight dtype."""
    uses = Counter(name for node in model.graph.node for name in node.input if name)
    for p in plans:
        if p.rank == 0 or p.alpha == 0.0:
            continue
        name = current_weight_name(model, p.op)  # an earlier pass may have given the node its own copy
        if uses[name] > 1:
            uses[name] -= 1
            name = p.own_copy = give_own_copy(model, p.op)
            uses[name] = 1
        w = read_initializer(model, name)
        mat = weight_matrix(p.op, w.astype(np.float64))
        new = pj.edit_matrix(mat, p.q, p.alpha)
        p.relative_change = float(np.linalg.norm(new - mat) / max(np.linalg.norm(mat), 1e-300))
        write_initializer(model, name, matrix_to_weight(p.op, new, w))
