"""Held-out selection, pure: split the calibration images into a fit part (statistics) and a held-out part
(every data-driven choice), score an edit on the held-out part, and pick among candidate edits.

Choices judged on the images whose statistics built an edit overfit (extra directions from 300 forget
images reach rank 8-25 per convolution; re-collecting on an edited model can undo the edit), so the tool
never decides on them and never returns an edit that is worse, on the held-out part, than one it had.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_damp.data.dataset import label_values
from onnx_damp.options import MethodOptions
from onnx_damp.verify.metrics import per_class_accuracy

HOLDOUT_FRACTION = MethodOptions.holdout  # share of each class's calibration images held out of the statistics
MIN_HOLDOUT = 5          # a class with fewer than 2 * this many images is not split (all go to the fit part)
# at most this many images of a class are held out (the rest build statistics): a 1% forget target is then
# still 2.5 images of each class, and a large calibration set does not multiply the cost of every check
MAX_HOLDOUT = 256
MAX_MEAN_DROP = 0.01     # the retain guards: mean retain accuracy down at most 1 point ...
MAX_CLASS_DROP = 0.03    # ... and no retain class down more than 3 points


def split_holdout(y: np.ndarray, fraction: float = HOLDOUT_FRACTION,
                  min_holdout: int = MIN_HOLDOUT, max_holdout: int = MAX_HOLDOUT) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) sample indices: fraction of each class's images, at most max_holdout, evenly spread.

    Deterministic and spread over the file order; a class with fewer than 2 * min_holdout images is kept
    whole in the fit part (its prototype matters more than a check on a handful of images).
    """
    y = np.asarray(y)
    fit, held = [], []
    if fraction <= 0:
        return np.arange(len(y)), np.zeros(0, dtype=np.int64)
    for c in label_values(y):
        idx = np.flatnonzero(y == c)
        n_held = min(int(round(len(idx) * fraction)), max_holdout)
        if len(idx) < 2 * min_holdout or n_held < min_holdout:
            fit.append(idx)
            continue
        pick = np.zeros(len(idx), bool)
        pick[np.round(np.linspace(0, len(idx) - 1, n_held)).astype(int)] = True
        held.append(idx[pick])
        fit.append(idx[~pick])
    cat = lambda parts: np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(fit), cat(held)


@dataclass
class HeldOutScore:
    """One edit on the held-out images: forget accuracy and each retain class's change against the original."""

    forget_accuracy: float
    retain_accuracy: float                 # mean over retain classes
    class_drops: dict[int, float] = field(default_factory=dict)  # original - edited accuracy per retain class
    retain_scored: bool = True             # False: run on the forget images only (it could not be picked)

    @property
    def mean_drop(self) -> float:
        return float(np.mean(list(self.class_drops.values()))) if self.class_drops else 0.0

    @property
    def worst(self) -> tuple[int | None, float]:
        """(retain class, drop) with the largest drop."""
        if not self.class_drops:
            return None, 0.0
        c = max(self.class_drops, key=lambda k: self.class_drops[k])
        return c, self.class_drops[c]

    def within_guards(self, max_mean_drop: float = MAX_MEAN_DROP, max_class_drop: float = MAX_CLASS_DROP) -> bool:
        return (self.retain_scored and self.mean_drop <= max_mean_drop + 1e-12
                and self.worst[1] <= max_class_drop + 1e-12)

    def to_dict(self) -> dict:
        if not self.retain_scored:
            return {"forget_accuracy": self.forget_accuracy, "retain_accuracy": None, "mean_retain_drop": None,
                    "worst_retain_class": None, "worst_retain_drop": None, "retain_scored": False}
        c, d = self.worst
        return {"forget_accuracy": self.forget_accuracy, "retain_accuracy": self.retain_accuracy,
                "mean_retain_drop": self.mean_drop, "worst_retain_class": c, "worst_retain_drop": d}


def score(pred: np.ndarray, y: np.ndarray, forget: list[int], original: dict[int, float]) -> HeldOutScore:
    """Score predictions on the held-out images; original: the unedited model's per-class accuracy there."""
    acc = per_class_accuracy(pred, y)
    fmask = np.isin(y, forget)
    f_acc = float(np.mean(pred[fmask] == y[fmask])) if fmask.any() else float("nan")
    retain = [c for c in acc if c not in forget]
    return HeldOutScore(f_acc, float(np.mean([acc[c] for c in retain])) if retain else float("nan"),
                        {c: original[c] - acc[c] for c in retain if c in original})


def pick(scores: list[HeldOutScore]) -> int:
    """Index of the candidate to keep: the lowest held-out forget accuracy among those within the retain
    guards (earlier candidates win ties); when none is within them, the smallest worst-class drop."""
    ok = [i for i, s in enumerate(scores) if s.within_guards()]
    if ok:
        return min(ok, key=lambda i: (scores[i].forget_accuracy, i))
    scored = [i for i, s in enumerate(scores) if s.retain_scored] or list(range(len(scores)))
    return min(scored, key=lambda i: (scores[i].worst[1], scores[i].mean_drop, i))


def forget_only(forget_accuracy: float) -> HeldOutScore:
    """The score of a candidate run on the held-out forget images only: its forget accuracy was not below
    that of a candidate already within the guards, so pick could never choose it (ties go to the earlier)."""
    return HeldOutScore(forget_accuracy, float("nan"), {}, retain_scored=False)
