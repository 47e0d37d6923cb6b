"""Verification metrics and pipeline gates: pure numpy/scipy math, nothing here knows about ONNX.

Every definition is written out in docs/metrics.md; the docstrings give the formula in one line.
Conventions: accuracies and drops are fractions in [0, 1] (a drop is positive when the model got
worse); per-sample features are rows of an [n, d] array.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_damp.verify.metrics import AccuracySummary
from onnx_damp.method.projection import mahalanobis_separation, probe_separability
from onnx_damp.method.selection import MAX_CLASS_DROP, MAX_MEAN_DROP


# ------------------------------------------------------------------------------------------ accuracy
def selectivity(original: AccuracySummary, model: AccuracySummary) -> dict:
    """forget_drop - mean_retain_drop, with forget_drop = acc_f(original) - acc_f(model) and
    mean_retain_drop = mean-over-retain-classes accuracy of the original minus that of the model."""
    forget_drop = original.forget_accuracy - model.forget_accuracy
    retain_drop = original.retain_accuracy - model.retain_accuracy
    return {"forget_drop": float(forget_drop), "mean_retain_drop": float(retain_drop),
            "selectivity": float(forget_drop - retain_drop)}


# ------------------------------------------------------------------------------------------------ CKA
def linear_cka(x: np.ndarray, y: np.ndarray) -> float | None:
    """Linear CKA (Kornblith et al. 2019) of features x [n, p] and y [n, q] of the same n samples.

    With column-centred X, Y: CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), in [0, 1]; invariant to
    orthogonal transforms and isotropic scaling of either side. None when either side has no variance.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs [n, p] and [n, q] features of the same samples, got {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        return None
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):
        k, l_ = x @ x.T, y @ y.T                   # sample Gram matrices: tr(K L) = ||Y^T X||_F^2
        cross, nx, ny = float(np.sum(k * l_)), float(np.linalg.norm(k)), float(np.linalg.norm(l_))
    else:
        cross = float(np.linalg.norm(y.T @ x) ** 2)
        nx, ny = float(np.linalg.norm(x.T @ x)), float(np.linalg.norm(y.T @ y))
    scale = max(nx, ny, 1e-300)
    if nx <= 1e-12 * scale or ny <= 1e-12 * scale or nx == 0.0 or ny == 0.0:
        return None
    return float(min(1.0, max(0.0, cross / (nx * ny))))


def match_layers(n_model: int, n_other: int) -> tuple[list[int], str]:
    """Index of the other model's layer matched to each of the model's n_model layers, and how.

    Same count: layer i to layer i ("index"). Otherwise by relative depth ("depth"): layer i of the model
    (depth i / (n_model - 1)) to the other model's layer with the nearest depth, round(i (n_other-1)/(n_model-1)).
    """
    if n_model == n_other:
        return list(range(n_model)), "index"
    if n_model == 1:
        return [n_other - 1], "depth"
    return [int(round(i * (n_other - 1) / (n_model - 1))) for i in range(n_model)], "depth"


def deepest_layers(n: int) -> list[int]:
    """The layers the CKA gain averages over: the deepest quarter, at least one (ceil(n / 4))."""
    k = max(1, math.ceil(n / 4))
    return list(range(n - k, n))


def cka_gain(edited: Sequence[float | None], original: Sequence[float | None]) -> float | None:
    """Mean over the deepest quarter of layers of CKA(edited, reference) - CKA(original, reference)."""
    idx = deepest_layers(len(edited))
    gains = [edited[i] - original[i] for i in idx if edited[i] is not None and original[i] is not None]
    return float(np.mean(gains)) if gains and len(gains) == len(idx) else None


# ------------------------------------------------------------------------------ residual forget structure
def forget_structure(forget_features: np.ndarray, retain_features: np.ndarray) -> tuple[float, float] | None:
    """(Delta, separability) of the Fisher probe, forget rows vs retain rows (projection.py's functions).

    Delta = sqrt(dm^T S^-1 dm): Mahalanobis distance of the group means under the averaged within-group
    covariance S = (C_f + C_r) / 2 (ridge 1e-6); separability = 2 Phi(Delta/2) - 1 = erf(Delta / (2 sqrt 2)).
    None with fewer than two rows in a group.
    """
    f = np.asarray(forget_features, dtype=np.float64)
    r = np.asarray(retain_features, dtype=np.float64)
    if len(f) < 2 or len(r) < 2:
        return None
    d, ridge = f.shape[1], 1e-6
    if d > len(f) + len(r):
        # wide features: means and covariances live in the span of the rows; in a basis of that span the
        # d x d problem becomes m x m (m <= rows), the same up to the eigenvalue floor (the ridge keeps its
        # absolute size: 1e-6 * trace / d)
        u, sv, vt = np.linalg.svd(np.vstack([f, r]), full_matrices=False)
        basis = vt[sv > 1e-12 * max(sv[0], 1e-300)].T
        f, r = f @ basis, r @ basis
        ridge = ridge * basis.shape[1] / d
        d = basis.shape[1]
    delta = mahalanobis_separation(f.mean(0), np.cov(f, rowvar=False, bias=True).reshape(d, d),
                                   r.mean(0), np.cov(r, rowvar=False, bias=True).reshape(d, d), ridge=ridge)
    return float(delta), probe_separability(delta)


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, None when either is unknown or the reference is 0."""
    if value is None or reference is None or reference <= 0.0:
        return None
    return float(value / reference)


# ------------------------------------------------------------------------------- membership inference
def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each probability row, in nats (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=-1)


def true_class_probability(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(y_i | x_i): the probability the model gives each sample's own label."""
    p = np.asarray(probs, dtype=np.float64)
    return p[np.arange(len(p)), np.asarray(labels, dtype=np.int64)]


@dataclass(frozen=True)
class LogisticModel:
    """A 1-D logistic regression on a standardised feature: P(member | t) = sigmoid(a (t - mean) / std + b)."""

    a: float
    b: float
    mean: float
    std: float

    def decision(self, t: np.ndarray) -> np.ndarray:
        return self.a * (np.asarray(t, dtype=np.float64) - self.mean) / self.std + self.b

    def predict(self, t: np.ndarray) -> np.ndarray:
        """1 (member) where the decision is positive (probability above 1/2), else 0; a slope of 0 (a fit held
        at its direction bound: the feature says nothing) calls no sample a member."""
        if self.a == 0:
            return np.zeros(np.shape(t), dtype=np.int64)
        return (self.decision(t) > 0).astype(np.int64)


def fit_logistic_1d(t: np.ndarray, labels: np.ndarray, balanced: bool = True, l2: float = 1.0,
                    direction: int = 0) -> LogisticModel:
    """Fit a 1-D logistic regression with scipy.optimize (L-BFGS-B, exact gradient).

    The feature is standardised (mean 0, std 1; a constant feature keeps std 1). Loss:
    sum_i w_i [log(1 + e^{s_i}) - y_i s_i] + l2/2 a^2 with s_i = a z_i + b; the intercept b is not
    penalised (sklearn's LogisticRegression with C = 1/l2). balanced: w_i = n / (2 n_{y_i}) so both
    classes weigh the same (sklearn's class_weight="balanced"); else w_i = 1. direction: +1 holds a >= 0
    (label 1 is the side of larger t), -1 holds a <= 0, 0 leaves a free.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    from onnx_damp.runtime import blas

    blas.refresh("scipy.optimize")  # scipy's own OpenBLAS, loaded by this import, under the host's thread limit

    t = np.asarray(t, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if t.shape != y.shape or not len(t):
        raise ValueError("logistic regression needs one label per feature value")
    if not set(np.unique(y)) <= {0.0, 1.0}:
        raise ValueError("labels must be 0 or 1")
    n1 = float(y.sum())
    n0 = len(y) - n1
    if balanced and n1 and n0:
        w = np.where(y == 1, len(y) / (2 * n1), len(y) / (2 * n0))
    else:
        w = np.ones_like(y)
    mean, std = float(t.mean()), float(t.std())
    std = std if std > 1e-12 * max(1.0, abs(mean)) else 1.0
    z = (t - mean) / std

    def loss(theta):
        a, b = theta
        s = a * z + b
        ls = np.logaddexp(0.0, s) - y * s
        g = w * (expit(s) - y)
        return float(np.sum(w * ls) + 0.5 * l2 * a * a), np.array([np.sum(g * z) + l2 * a, np.sum(g)])

    bound = {1: (0.0, None), -1: (None, 0.0)}.get(int(np.sign(direction)), (None, None))
    res = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B", bounds=[bound, (None, None)],
                   options={"maxiter": 500, "gtol": 1e-10})
    a, b = (float(v) for v in res.x)
    return LogisticModel(a, b, mean, std)


@dataclass
class MiaResult:
    """One membership-inference attack against the forget set."""

    protocol: str
    feature: str
    member_rate: float            # fraction of forget-train samples the attack calls members
    efficacy: float               # 1 - member_rate (Jia et al.'s MIA-efficacy; higher = more forgotten)
    attack_balanced_accuracy: float   # balanced accuracy on the attack's own training data
    members: int                  # attack training members (retain-train samples)
    non_members: int              # attack training non-members (retain-class test samples)
    targets: int                  # forget-train samples attacked

    def to_dict(self) -> dict:
        return {"protocol": self.protocol, "feature": self.feature, "member_rate": self.member_rate,
                "efficacy": self.efficacy, "attack_balanced_accuracy": self.attack_balanced_accuracy,
                "members": self.members, "non_members": self.non_members, "targets": self.targets}


def membership_attack(members: np.ndarray, non_members: np.ndarray, targets: np.ndarray,
                      protocol: str, feature: str, direction: int = 0) -> MiaResult:
    """Train a balanced 1-D logistic attack on members (label 1) vs non-members (label 0); apply it to targets.

    direction: the side members are on (+1: larger feature, -1: smaller, 0: learnt). A fixed side keeps an
    attack at chance from extrapolating a slope of the wrong sign, fitted to noise, to targets far outside
    its training range (a forgotten class's confidences near 0 would all be called members)."""
    members, non_members, targets = (np.asarray(v, dtype=np.float64).ravel() for v in (members, non_members, targets))
    t = np.concatenate([members, non_members])
    y = np.concatenate([np.ones(len(members)), np.zeros(len(non_members))])
    clf = fit_logistic_1d(t, y, balanced=True, direction=direction)
    tpr = float(clf.predict(members).mean())
    tnr = float(1.0 - clf.predict(non_members).mean())
    rate = float(clf.predict(targets).mean())
    return MiaResult(protocol, feature, rate, 1.0 - rate, 0.5 * (tpr + tnr), len(members), len(non_members),
                     len(targets))


def mia_entropy(p_retain_train: np.ndarray, p_test: np.ndarray, p_forget_train: np.ndarray) -> MiaResult:
    """Entropy attack (Chundawat et al. 2023): logistic regression on H(p), retain-train vs test."""
    return membership_attack(entropy(p_retain_train), entropy(p_test), entropy(p_forget_train),
                             "entropy, retain-train vs test (Chundawat et al. 2023)", "entropy", direction=-1)


def mia_confidence(p_retain_train: np.ndarray, y_retain_train: np.ndarray, p_test: np.ndarray, y_test: np.ndarray,
                   p_forget_train: np.ndarray, y_forget_train: np.ndarray) -> MiaResult:
    """Confidence attack (Jia et al. 2023 MIA-efficacy): logistic regression on p(y|x), retain-train vs test."""
    return membership_attack(true_class_probability(p_retain_train, y_retain_train),
                             true_class_probability(p_test, y_test),
                             true_class_probability(p_forget_train, y_forget_train),
                             "true-class confidence, retain-train vs test (Jia et al. 2023)", "confidence",
                             direction=1)


# ----------------------------------------------------------------------------------------- bias shift
@dataclass
class BiasShift:
    """Decomposition of the mean change of the forget-class logit into bias, head weight and features."""

    available: bool
    reason: str = ""
    samples: int = 0
    delta_logit: float | None = None      # mean over forget samples of z'_f - z_f
    bias: float | None = None             # mean of b'_f - b_f
    head_weight: float | None = None      # mean of (w'_f - w_f) . h'
    features: float | None = None         # mean of w_f . (h' - h)
    bias_share: float | None = None       # bias / delta_logit
    max_residual: float | None = None     # largest |z - (W h + b)| seen (how exact the affine fit is)

    def to_dict(self) -> dict:
        return {"available": self.available, "reason": self.reason, "samples": self.samples,
                "delta_logit": self.delta_logit, "bias": self.bias, "head_weight": self.head_weight,
                "features": self.features, "bias_share": self.bias_share, "max_residual": self.max_residual}


AFFINE_RTOL = 2e-3


def affine_bias(w: np.ndarray, h: np.ndarray, z: np.ndarray,
                rtol: float = AFFINE_RTOL) -> tuple[np.ndarray | None, float]:
    """The constant b with z_i = W h_i + b for every sample i, or None when no constant fits.

    w: [K, d] (scale factors such as Gemm's alpha already applied), h: [n, d], z: [n, K]. b is the mean of
    z_i - W h_i; it fits when every sample's offset is within rtol * max(1, max|z|, max|W h|) of it.
    Also returns the largest deviation seen.
    """
    wh = np.asarray(h, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T
    z = np.asarray(z, dtype=np.float64)
    if wh.shape != z.shape:
        return None, float("inf")
    offsets = z - wh
    b = offsets.mean(axis=0)
    dev = float(np.max(np.abs(offsets - b))) if offsets.size else 0.0
    scale = max(1.0, float(np.max(np.abs(z))) if z.size else 0.0, float(np.max(np.abs(wh))) if wh.size else 0.0)
    return (b if dev <= rtol * scale else None), dev


def bias_shift(w_orig: np.ndarray, h_orig: np.ndarray, z_orig: np.ndarray, w_edit: np.ndarray, h_edit: np.ndarray,
               z_edit: np.ndarray, labels: np.ndarray) -> BiasShift:
    """Split the change of each forget sample's own logit, original -> edited, through the last linear layer.

    With z = W h + b (b recovered by affine_bias, which also checks that the logits are affine in h):
    z'_f - z_f = (b'_f - b_f) + (w'_f - w_f) . h' + w_f . (h' - h), f the sample's label; each term and the
    total are averaged over the samples, and bias_share = mean(b'_f - b_f) / mean(z'_f - z_f).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return BiasShift(False, "no forget-class samples")
    if np.shape(w_orig) != np.shape(w_edit):
        return BiasShift(False, f"the last linear layer has weight {list(np.shape(w_orig))} in the original "
                                f"but {list(np.shape(w_edit))} in the model")
    b_o, dev_o = affine_bias(w_orig, h_orig, z_orig)
    b_e, dev_e = affine_bias(w_edit, h_edit, z_edit)
    if b_o is None or b_e is None:
        which = "original" if b_o is None else "model"
        return BiasShift(False, f"the {which}'s logits are not W h + b of its last editable operator "
                                f"(largest deviation {max(dev_o, dev_e):.3g}); a non-linear output or a "
                                f"computation after the last Gemm/MatMul", max_residual=max(dev_o, dev_e))
    w_o, w_e = np.asarray(w_orig, dtype=np.float64), np.asarray(w_edit, dtype=np.float64)
    h_o, h_e = np.asarray(h_orig, dtype=np.float64), np.asarray(h_edit, dtype=np.float64)
    rows = np.arange(len(labels))
    bias = b_e[labels] - b_o[labels]
    head = np.einsum("nd,nd->n", w_e[labels] - w_o[labels], h_e)
    feat = np.einsum("nd,nd->n", w_o[labels], h_e - h_o)
    total = bias + head + feat            # = reconstructed z'_f - z_f
    actual = np.asarray(z_edit, dtype=np.float64)[rows, labels] - np.asarray(z_orig, dtype=np.float64)[rows, labels]
    mean_total = float(np.mean(total))
    scale = max(1.0, float(np.max(np.abs(z_orig))), float(np.max(np.abs(z_edit))))
    share = None if abs(mean_total) <= 1e-6 * scale else float(np.mean(bias) / mean_total)
    return BiasShift(True, "", int(len(labels)), float(np.mean(actual)), float(np.mean(bias)), float(np.mean(head)),
                     float(np.mean(feat)), share, max(dev_o, dev_e))


# ---------------------------------------------------------------------------------------------- gates
GATE_SPECS = {
    # gate name (= CLI option without dashes, underscores): (metric key, comparison, CLI option)
    "max_forget_acc": ("forget_accuracy", "<=", "--max-forget-acc"),
    "max_retain_drop": ("retain_drop", "<=", "--max-retain-drop"),
    "max_class_drop": ("worst_retain_drop", "<=", "--max-class-drop"),
    "min_cka_gain": ("cka_gain", ">=", "--min-cka-gain"),
    "max_mia": ("mia_member_rate", "<=", "--max-mia"),
}


@dataclass
class Gates:
    """Pass/fail thresholds for pipelines; None = not checked. Fractions, as in the JSON outputs.

    max_forget_acc: forget accuracy of the model <= this. max_retain_drop: mean retain accuracy of the
    original minus the model's <= this. max_class_drop: no retain class's accuracy down more than this.
    min_cka_gain: cka_gain >= this. max_mia: the model's forget member rate under the confidence attack
    (mia_confidence) <= this. defaults: the fields that hold the tool's own targets (see tool_gates), not
    thresholds the user asked for.
    """

    max_forget_acc: float | None = None
    max_retain_drop: float | None = None
    min_cka_gain: float | None = None
    max_mia: float | None = None
    max_class_drop: float | None = None
    defaults: tuple[str, ...] = ()

    def active(self) -> dict[str, float]:
        """The thresholds to check, in GATE_SPECS order."""
        return {k: float(getattr(self, k)) for k in GATE_SPECS if getattr(self, k) is not None}


# the tool's own targets, checked unless turned off (--no-gates): the bounds bench/zoo.py measures, the same
# the held-out guards hold candidate edits to (mean retain drop <= 1 point, no retain class down > 3 points)
DEFAULT_MAX_RETAIN_DROP = MAX_MEAN_DROP
DEFAULT_MAX_CLASS_DROP = MAX_CLASS_DROP


def tool_gates(gates: Gates | None, target_forget_accuracy: float, has_original: bool = True) -> Gates:
    """gates with every threshold the user left unset filled with the tool's own target: forget accuracy at
    most target_forget_accuracy and, when there is an original to compare with, the retain bounds."""
    given = gates if gates is not None else Gates()
    fill = {"max_forget_acc": target_forget_accuracy}
    if has_original:
        fill.update(max_retain_drop=DEFAULT_MAX_RETAIN_DROP, max_class_drop=DEFAULT_MAX_CLASS_DROP)
    unset = {k: v for k, v in fill.items() if getattr(given, k) is None}
    return dataclasses.replace(given, **unset, defaults=tuple(given.defaults) + tuple(unset))


@dataclass
class GateResult:
    gate: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    default: bool = False   # the tool's own target, not a threshold the user gave

    def to_dict(self) -> dict:
        return {"gate": self.gate, "metric": self.metric, "value": self.value, "threshold": self.threshold,
                "passed": self.passed, "default": self.default}

    def describe(self) -> str:
        op = GATE_SPECS[self.gate][1]
        shown = "n/a" if self.value is None else f"{self.value:.4f}"
        verdict = "holds" if self.passed else "fails"
        return f"{GATE_SPECS[self.gate][2]} {verdict}: {self.metric} {shown} (need {op} {self.threshold:g})"


def check_gates(values: dict[str, float | None], gates: Gates | None) -> list[GateResult]:
    """Compare metric values with the active gates; a metric that could not be computed fails its gate."""
    out = []
    for name, threshold in (gates.active() if gates else {}).items():
        metric, op, _ = GATE_SPECS[name]
        v = values.get(metric)
        ok = v is not None and not math.isnan(v) and (v <= threshold if op == "<=" else v >= threshold)
        out.append(GateResult(name, metric, None if v is None else float(v), threshold, bool(ok),
                              name in gates.defaults))
    return out


def gates_summary(results: list[GateResult]) -> str:
    """One line naming every failed gate (empty when all hold)."""
    failed = [r.describe() for r in results if not r.passed]
    if not failed:
        return ""
    hint = (" (the tool's own targets; --no-gates turns them off)" if any(r.default for r in results if not r.passed)
            else "")
    return "gate failed: " + "; ".join(failed) + hint


def gates_dict(results: list[GateResult]) -> dict:
    return {"passed": all(r.passed for r in results), "checks": [r.to_dict() for r in results]}
