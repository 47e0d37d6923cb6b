"""Accuracy and output-distribution metrics on labelled data (pure numpy)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from onnx_damp.data.dataset import label_values

EPS = 1e-12


def is_probability(out: np.ndarray) -> bool:
    """Whether output rows already are probability vectors (non-negative, summing to 1)."""
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=-1), 1.0, atol=1e-4))


def to_probabilities(out: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, unless the rows already are probability vectors."""
    out = np.asarray(out, dtype=np.float64)
    if is_probability(out):
        return out
    z = out - out.max(axis=-1, keepdims=True)  # one new [N, K] array, then in place (N x K can be large)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def per_class_accuracy(pred: np.ndarray, y: np.ndarray) -> dict[int, float]:
    return {int(c): float(np.mean(pred[y == c] == c)) for c in label_values(y)}


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row, in nats."""
    p, q = np.clip(p, EPS, 1.0), np.clip(q, EPS, 1.0)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row, in nats (between 0 and ln 2)."""
    m = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


@dataclass
class AccuracySummary:
    per_class: dict[int, float]
    forget: list[int]
    forget_accuracy: float        # accuracy over all forget-class samples
    retain_accuracy: float        # mean of the per-class accuracies of the retain classes
    worst_retain_class: int | None
    worst_retain_accuracy: float | None
    samples: int

    def to_dict(self) -> dict:
        return {"forget_classes": self.forget, "forget_accuracy": self.forget_accuracy,
                "retain_accuracy": self.retain_accuracy, "worst_retain_class": self.worst_retain_class,
                "worst_retain_accuracy": self.worst_retain_accuracy, "samples": self.samples,
                "per_class_accuracy": {str(k): v for k, v in self.per_class.items()}}


def pooled_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples predicted as their label, pooled over classes (nan for no samples)."""
    return float(np.mean(pred == y)) if len(y) else float("nan")


def summarize(pred: np.ndarray, y: np.ndarray, forget: Sequence[int]) -> AccuracySummary:
    pc = per_class_accuracy(pred, y)
    fmask = np.isin(y, list(forget))
    facc = pooled_accuracy(pred[fmask], y[fmask])
    retain = {c: a for c, a in pc.items() if c not in set(forget)}
    racc = float(np.mean(list(retain.values()))) if retain else float("nan")
    worst = min(retain, key=retain.get) if retain else None
    return AccuracySummary(pc, list(forget), facc, racc, worst, retain[worst] if retain else None, int(len(y)))


def forget_confusion(preds: dict[str, np.ndarray], y: np.ndarray, forget: Sequence[int], num_classes: int) -> dict:
    """Where the forget-class samples go: {name: {"<forget class>": [count predicted as class 0, 1, ...]}}.

    One list per model (keys as given, e.g. "model", "original", "reference") and forget class, indexed by
    the predicted class, num_classes long (longer if a model predicts a higher index).
    """
    y = np.asarray(y)
    size = max([int(num_classes)] + [int(np.max(p)) + 1 for p in preds.values() if len(p)])
    return {name: {str(c): np.bincount(np.asarray(p)[y == c], minlength=size).astype(int).tolist()
                   for c in forget} for name, p in preds.items()}


def worst_retain_drop(before: AccuracySummary, after: AccuracySummary) -> tuple[int | None, float]:
    """The retain class that lost the most accuracy, and how much (fraction, positive = worse)."""
    drops = {c: before.per_class[c] - after.per_class[c] for c in before.per_class
             if c not in set(before.forget) and c in after.per_class}
    if not drops:
        return None, 0.0
    c = max(drops, key=drops.get)
    return c, float(drops[c])
