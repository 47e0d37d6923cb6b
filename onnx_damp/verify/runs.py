"""The verification step shared by `evaluate` and `forget`: run the models, then the pure math of verification.py.

Inputs: the model, optionally the original (before forgetting) and a reference retrained without the
forget classes, held-out test data and optionally training data (for membership inference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import onnx

from onnx_damp.data.dataset import Dataset
from onnx_damp.verify.feature_runs import PooledFeatures, extract, pick_samples
from onnx_damp.ops.base import EditableOp
from onnx_damp.ops.graph import scan_graph
from onnx_damp.verify.metrics import AccuracySummary, pooled_accuracy, to_probabilities, worst_retain_drop
from onnx_damp.runtime.predict import predict
from onnx_damp.verify.measures import (BiasShift, MiaResult, bias_shift, cka_gain, deepest_layers, forget_structure,
                           linear_cka, match_layers, mia_confidence, mia_entropy, ratio, selectivity)
from onnx_damp.ops.registry import adapter
from onnx_damp.ops.weights import index_graph, read_weight

MODEL_NAMES = ("model", "original", "reference")


@dataclass
class LayerVerification:
    """Feature metrics of one editable operator's input (forget-class test samples)."""

    index: int
    node: str
    op_type: str
    feature_dim: int
    scope: str = ""                         # the exporter's module path, when it recorded one
    original_node: str | None = None
    reference_node: str | None = None
    cka_model: float | None = None          # CKA(model, reference)
    cka_original: float | None = None       # CKA(original, reference)
    distance_model: float | None = None         # forget vs retain Fisher-probe Delta in the model
    distance_original: float | None = None      # the same in the original
    separability_model: float | None = None     # 2 Phi(Delta/2) - 1 in the model
    separability_original: float | None = None  # the same in the original

    @property
    def cka_gain(self) -> float | None:
        if self.cka_model is None or self.cka_original is None:
            return None
        return self.cka_model - self.cka_original

    @property
    def separability_ratio(self) -> float | None:
        return ratio(self.separability_model, self.separability_original)

    @property
    def distance_ratio(self) -> float | None:
        return ratio(self.distance_model, self.distance_original)

    def to_dict(self) -> dict:
        return {"index": self.index, "node": self.node, "scope": self.scope, "op_type": self.op_type,
                "feature_dim": self.feature_dim,
                "original_node": self.original_node, "reference_node": self.reference_node,
                "cka_to_reference": {"model": self.cka_model, "original": self.cka_original},
                "cka_gain": self.cka_gain,
                "forget_separability": {"model": self.separability_model, "original": self.separability_original,
                                        "ratio": self.separability_ratio},
                "forget_distance": {"model": self.distance_model, "original": self.distance_original,
                                    "ratio": self.distance_ratio}}


@dataclass
class Verification:
    """Everything beyond accuracy that `evaluate` and `forget` report (see docs/metrics.md)."""

    selectivity: dict | None = None
    mia: dict[str, dict[str, MiaResult]] = field(default_factory=dict)
    mia_reason: str = ""
    forget_samples: int = 0
    retain_samples: int = 0
    layers: list[LayerVerification] = field(default_factory=list)
    matching: dict[str, str] = field(default_factory=dict)   # "original"/"reference" -> "index" | "depth"
    cka_gain: float | None = None
    cka_gain_layers: list[int] = field(default_factory=list)
    bias_shift: BiasShift | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def mia_member_rate(self) -> float | None:
        """The model's forget member rate under the confidence attack (the --max-mia gate's metric)."""
        r = self.mia.get("model", {}).get("confidence")
        return None if r is None else r.member_rate

    def to_dict(self) -> dict:
        return {
            "selectivity": self.selectivity,
            "mia": {"available": bool(self.mia), "reason": self.mia_reason,
                    "gate_member_rate": self.mia_member_rate,
                    **{name: {k: r.to_dict() for k, r in res.items()} for name, res in self.mia.items()}},
            "feature_samples": {"forget": self.forget_samples, "retain": self.retain_samples},
            "layer_matching": self.matching,
            "layers": [layer.to_dict() for layer in self.layers],
            "cka_gain": {"value": self.cka_gain, "layers": self.cka_gain_layers},
            "bias_shift": self.bias_shift.to_dict() if self.bias_shift is not None else
            {"available": False, "reason": "needs --original and feature samples"},
            "notes": self.notes,
        }


def gate_values(summary: AccuracySummary, original: AccuracySummary | None, v: Verification) -> dict:
    """The metric each gate reads (keys of verification.GATE_SPECS)."""
    return {"forget_accuracy": summary.forget_accuracy,
            "retain_drop": None if original is None else original.retain_accuracy - summary.retain_accuracy,
            "worst_retain_drop": None if original is None else worst_retain_drop(original, summary)[1],
            "cka_gain": v.cka_gain, "mia_member_rate": v.mia_member_rate}


def verify(protos: dict[str, onnx.ModelProto], test: Dataset, forget: Sequence[int], retain: Sequence[int],
           summaries: dict[str, AccuracySummary], test_probs: dict[str, np.ndarray], train: Dataset | None = None,
           train_outputs: dict[str, np.ndarray] | None = None,
           train_reason: str = "no training data given", feature_samples: int = 500, batch_size: int = 256,
           device: str = "cpu", input_name: str | None = None, output_name: str | None = None,
           progress: Callable[[int], None] | None = None) -> Verification:
    """Compute the verification metrics of protos["model"] against protos["original"] / ["reference"].

    train_outputs: output rows on train already known per model name (not predicted again).
    """
    v = Verification()
    f = list(forget)
    ref_note = reference_recognises_forget(test_probs.get("reference"), test.y, f)
    if ref_note:
        v.notes.append(ref_note)
    if "original" in summaries:
        v.selectivity = selectivity(summaries["original"], summaries["model"])
    if train is not None:
        v.mia = _mia(protos, test, train, f, test_probs, batch_size, device, input_name, output_name, progress,
                     train_outputs or {})
    else:
        v.mia_reason = train_reason
    has_orig, has_ref = "original" in protos, "reference" in protos
    if feature_samples > 0 and (has_orig or has_ref):
        _feature_metrics(v, protos, test, f, list(retain), feature_samples, device, input_name, output_name, progress)
    elif feature_samples <= 0:
        v.notes.append("feature metrics (CKA, residual separability, bias shift) skipped: --feature-samples 0")
    return v


def reference_recognises_forget(ref_probs: "np.ndarray | None", y: np.ndarray, forget: Sequence[int],
                                limit: float = 0.5) -> str | None:
    """A note when the --reference model still classifies most forget-class samples correctly.

    A model retrained without the class cannot predict it well; if it does, the reference was likely trained
    with the class (a wrong file or another forget set), and every metric against it is meaningless.
    """
    if ref_probs is None:
        return None
    mask = np.isin(y, list(forget))
    if not mask.any():
        return None
    acc = pooled_accuracy(ref_probs[mask].argmax(1), y[mask])
    if acc <= limit:
        return None
    return (f"the reference model classifies {100 * acc:.1f}% of the forget-class samples correctly: was it "
            "really retrained without the forgotten class(es)? Metrics against it compare with a model that knows them")


def feature_runs(test: Dataset, forget: Sequence[int], retain: Sequence[int], feature_samples: int,
                 has_original: bool, has_reference: bool) -> int:
    """How many single-sample runs _feature_metrics makes (for the progress bar)."""
    if feature_samples <= 0 or not (has_original or has_reference):
        return 0
    nf = len(pick_samples(test.y, forget, feature_samples))
    nr = len(pick_samples(test.y, retain, feature_samples)) if has_original else 0
    return (nf + nr) * (1 + int(has_original)) + nf * int(has_reference)


# ------------------------------------------------------------------------------------------------- MIA
def _mia(protos, test: Dataset, train: Dataset, f: list[int], test_probs, batch_size, device, input_name,
         output_name, progress=None, known: dict[str, np.ndarray] | None = None) -> dict[str, dict[str, MiaResult]]:
    tr_forget = np.isin(train.y, f)
    te_retain = ~np.isin(test.y, f)
    out = {}
    for name in MODEL_NAMES:
        if name not in protos:
            continue
        if name in (known or {}):
            p_train = to_probabilities(known[name])  # already predicted: no work, nothing to count
        else:
            p_train = to_probabilities(predict(protos[name], train, batch_size, device, input_name, output_name,
                                               progress))
        p_test = test_probs[name][te_retain]
        args = (p_train[~tr_forget], p_test, p_train[tr_forget])
        out[name] = {"entropy": mia_entropy(*args),
                     "confidence": mia_confidence(p_train[~tr_forget], train.y[~tr_forget], p_test,
                                                  test.y[te_retain], p_train[tr_forget], train.y[tr_forget])}
    return out


# --------------------------------------------------------------------------------------- feature metrics
def _last_linear(proto: onnx.ModelProto, op: EditableOp) -> "np.ndarray | str":
    """[classes, d] matrix the last editable operator applies (Gemm alpha included), or why there is none."""
    w = read_weight(index_graph(proto.graph), op).astype(np.float64)
    return adapter(op).linear_map(op, w, proto.graph.node[op.node_index])


def _feature_metrics(v: Verification, protos, test: Dataset, f: list[int], retain: list[int], limit: int,
                     device, input_name, output_name, progress) -> None:
    ops = {name: scan_graph(p).editable for name, p in protos.items()}
    empty = [name for name, o in ops.items() if not o]
    if empty:
        v.notes.append(f"feature metrics skipped: no editable operator in the {', '.join(empty)}")
        return
    has_orig, has_ref = "original" in protos, "reference" in protos
    fidx = pick_samples(test.y, f, limit)
    ridx = pick_samples(test.y, retain, limit) if has_orig else np.zeros(0, dtype=np.int64)
    v.forget_samples, v.retain_samples = len(fidx), len(ridx)
    nf = len(fidx)
    both = np.concatenate([fidx, ridx])
    feats: dict[str, PooledFeatures] = {}
    for name in MODEL_NAMES:
        if name in protos:
            idx = fidx if name == "reference" else both
            feats[name] = extract(protos[name], ops[name], test, idx, device, input_name, output_name, progress)
    n = len(ops["model"])
    m_orig, how_o = match_layers(n, len(ops["original"])) if has_orig else ([None] * n, None)
    m_ref, how_r = match_layers(n, len(ops["reference"])) if has_ref else ([None] * n, None)
    for name, how, other in (("original", how_o, m_orig), ("reference", how_r, m_ref)):
        if how is not None:
            v.matching[name] = how
            if how == "depth":
                v.notes.append(f"the {name} has {len(ops[name])} editable operators and the model {n}: "
                               "layers matched by relative depth, not by index")
    for i, op in enumerate(ops["model"]):
        lv = LayerVerification(i, op.node_name, op.op_type, op.feature_dim, op.scope)
        fm = feats["model"].layers[i]
        if has_orig:
            lv.original_node = ops["original"][m_orig[i]].node_name
            fo = feats["original"].layers[m_orig[i]]
            for which, feat in (("model", fm), ("original", fo)):
                got = forget_structure(feat[:nf], feat[nf:])
                if got is not None:
                    setattr(lv, f"distance_{which}", got[0])
                    setattr(lv, f"separability_{which}", got[1])
        if has_ref:
            lv.reference_node = ops["reference"][m_ref[i]].node_name
            fr = feats["reference"].layers[m_ref[i]]
            lv.cka_model = linear_cka(fm[:nf], fr)
            if has_orig:
                lv.cka_original = linear_cka(feats["original"].layers[m_orig[i]][:nf], fr)
        v.layers.append(lv)
    if has_ref and has_orig:
        v.cka_gain_layers = deepest_layers(n)
        v.cka_gain = cka_gain([lv.cka_model for lv in v.layers], [lv.cka_original for lv in v.layers])
    if has_orig:
        v.bias_shift = _bias_shift(protos, ops, feats, test.y[fidx], nf)


def _bias_shift(protos, ops, feats, labels: np.ndarray, nf: int) -> BiasShift:
    w = {}
    for name in ("original", "model"):
        got = _last_linear(protos[name], ops[name][-1])
        if isinstance(got, str):
            return BiasShift(False, f"{got} (in the {name})")
        w[name] = got
    h_o, h_e = feats["original"].layers[-1][:nf], feats["model"].layers[-1][:nf]
    z_o, z_e = feats["original"].logits[:nf], feats["model"].logits[:nf]
    for name, wm, h, z in (("original", w["original"], h_o, z_o), ("model", w["model"], h_e, z_e)):
        if wm.shape[0] != z.shape[1] or wm.shape[1] != h.shape[1]:
            return BiasShift(False, f"the {name}'s last editable operator maps {wm.shape[1]} features to "
                                    f"{wm.shape[0]} outputs, but the logits have {z.shape[1]} columns")
    return bias_shift(w["original"], h_o, z_o, w["model"], h_e, z_e, labels)
