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
    rejected: bool = False                 # its retain images were stopped once the guards were sure to fail:
    retain_run: int | None = None          # ... after this many of them; class_drops are then lower bounds

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
        if self.rejected:
            c, d = self.worst
            return {"forget_accuracy": self.forget_accuracy, "retain_accuracy": None, "mean_retain_drop": None,
                    "worst_retain_class": None, "worst_retain_drop": None, "retain_scored": False,
                    "rejected_early": True, "retain_images_run": self.retain_run,
                    "mean_retain_drop_at_least": self.mean_drop, "worst_retain_drop_at_least": d,
                    "worst_retain_class_so_far": c}
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


BREACH_MARGIN = 1e-9  # a bound beyond a guard by less than this is not a breach (drops move in steps of 1/256 or more)


def retain_order(y: np.ndarray, ridx: np.ndarray, original_pred: np.ndarray,
                 margin: np.ndarray | None = None) -> np.ndarray:
    """ridx in the order a candidate's retain images run when it may be stopped early (RetainGuard): first the
    images the original misses (where an edit can gain), then those it gets right, one class after the other
    in turn, so that every class's losses show up early. original_pred: the original's predicted class per
    held-out image (indexed like y). margin: the original's top score less its second (top_margin, indexed
    like y); given, each class's hits run from the smallest margin up, the images an edit flips first, so that
    a candidate bound to break the guards is stopped after fewer images (the order changes no score or pick)."""
    ridx = np.asarray(ridx, dtype=np.int64)
    hit = original_pred[ridx] == y[ridx]
    misses, hits = ridx[~hit], ridx[hit]
    if margin is not None:
        hits = hits[np.argsort(margin[hits], kind="stable")]
    rank = np.zeros(len(hits), dtype=np.int64)  # position of each hit within its class
    for c in label_values(y[hits]):
        m = y[hits] == c
        rank[m] = np.arange(int(m.sum()))
    return np.concatenate([misses, hits[np.lexsort((y[hits], rank))]])


def top_margin(out: np.ndarray) -> np.ndarray:
    """Each row's largest score less its second largest (0 with a single column)."""
    out = np.asarray(out, dtype=np.float64)
    if out.shape[1] < 2:
        return np.zeros(len(out))
    top2 = np.partition(out, out.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class RetainGuard:
    """Running lower bounds on each retain class's accuracy drop while a candidate's retain images run in chunks.

    A class's accuracy can at best end with every image not yet run correct, so its drop is at least
    original - (correct + not yet run) / n; once the worst bound or the mean bound is beyond its guard
    (MAX_CLASS_DROP, MAX_MEAN_DROP), the full score could not be within the guards and the rest need not run.
    Sound: a candidate it stops is one score() would also put outside the guards."""

    def __init__(self, y_retain: np.ndarray, original: dict[int, float], max_mean_drop: float = MAX_MEAN_DROP,
                 max_class_drop: float = MAX_CLASS_DROP) -> None:
        self.classes = [int(c) for c in label_values(y_retain) if int(c) in original]
        self.index = {c: i for i, c in enumerate(self.classes)}
        self.n = np.array([np.sum(y_retain == c) for c in self.classes], dtype=np.float64)
        self.base = np.array([original[c] for c in self.classes], dtype=np.float64)
        self.correct = np.zeros(len(self.classes))
        self.left = self.n.copy()
        self.run = 0
        self.max_mean_drop, self.max_class_drop = max_mean_drop, max_class_drop

    def add(self, y: np.ndarray, pred: np.ndarray) -> None:
        """Count one chunk of retain images: labels y, the candidate's predicted classes pred."""
        self.run += len(y)
        for c, ok in zip(y.tolist(), (pred == y).tolist()):
            i = self.index.get(int(c))
            if i is not None:
                self.left[i] -= 1
                self.correct[i] += ok

    def bounds(self) -> np.ndarray:
        """Each retain class's smallest possible final drop."""
        return self.base - (self.correct + self.left) / self.n

    def breached(self) -> bool:
        """Whether the guards are sure to fail whatever the images not yet run give."""
        if not self.classes:
            return False
        lb = self.bounds()
        return bool(lb.max() > self.max_class_drop + BREACH_MARGIN or lb.mean() > self.max_mean_drop + BREACH_MARGIN)

    def rejected_score(self, forget_accuracy: float) -> HeldOutScore:
        """The score of a candidate stopped early: its class drops are the lower bounds (never within the guards)."""
        lb = self.bounds()
        return HeldOutScore(forget_accuracy, float("nan"), {c: float(lb[i]) for c, i in self.index.items()},
                            retain_scored=False, rejected=True, retain_run=self.run)
