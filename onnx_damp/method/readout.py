"""The readout stage, pure math: how far to lower each forget class's output so that the held-out forget
images read like images of a class the model never learnt.

DAMP's representation edit removes forget directions from every operator's input space but keeps every
retain prototype: where a forget class is read from a combination of features it shares with retain
classes, no edit of that form can remove it (the zoo's LeNet-style and CIFAR-10 CNNs keep 26-35%). The
readout stage changes the last operator's bias for the forget channels only.

With log-scores s = log softmax(output) (or log of the output when it already is a probability vector),
the forget margin of a sample for forget class c is m_c = s_c - max_{r in retain} s_r (> 0: read as c).
On held-out calibration images (never those that built the edit), with m_f the margins of the images of
class c (those whose accuracy counts; class_shifts) and m_r those of the retain images:

    t_c = max(mean(m_f) - mean(m_r), max(m_f), mean(m_f) + k std(m_f), 0)

The first term moves the forget images' mean margin to where the retain images' margin for class c is,
i.e. class c then scores on its own images as it scores on images of other classes; the second makes every
held-out forget image lose class c. The max of n held-out margins leaves, in expectation, 1/(n+1) of unseen
forget images above it (60 held-out images: 1.6%, and a 45% chance of more than 1%), so the third term is a
one-sided normal tolerance bound: k (tolerance_factor) is chosen so that, were the margins normal, a share of
at most the target forget accuracy lies above it with 95% confidence (the conventional level). Lowering one
output channel never changes the prediction of a sample that was not predicted as that channel, so retain
accuracy cannot fall (it rises where a retain image was misread as the forget class). No free parameter
beyond the target the tool is asked to meet.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

from onnx_damp.verify.metrics import is_probability

LOG_FLOOR = -80.0  # log-scores below this are clipped (float32 softmax underflows near exp(-87))
TOLERANCE_CONFIDENCE = 0.95  # confidence of the tail term's tolerance bound (the conventional level)


def log_scores(outputs: np.ndarray) -> np.ndarray:
    """log softmax of output rows, or log of rows that already are probability vectors (clipped)."""
    out = np.asarray(outputs, dtype=np.float64)
    if is_probability(out):
        return np.maximum(np.log(np.maximum(out, 1e-300)), LOG_FLOOR)
    z = out - out.max(axis=-1, keepdims=True)
    return np.maximum(z - np.log(np.exp(z).sum(axis=-1, keepdims=True)), LOG_FLOOR)


def forget_margins(scores: np.ndarray, forget: list[int], retain: list[int]) -> np.ndarray:
    """[n, len(forget)] margins s_c - max_retain s_r of every sample for every forget class c."""
    best_retain = scores[:, retain].max(axis=1, keepdims=True)
    return scores[:, forget] - best_retain


def tolerance_factor(n: int, share: float, confidence: float = TOLERANCE_CONFIDENCE) -> float:
    """k of the one-sided normal tolerance bound mean + k std that, from n samples, lies above at least
    1 - share of the population with the given confidence (Natrella's approximation); inf when share <= 0."""
    if share <= 0 or n < 2:
        return float("inf")
    zp, zg = NormalDist().inv_cdf(1.0 - min(share, 0.5)), NormalDist().inv_cdf(confidence)
    a = 1.0 - zg ** 2 / (2.0 * (n - 1))
    b = zp ** 2 - zg ** 2 / n
    return float((zp + np.sqrt(max(zp ** 2 - a * b, 0.0))) / a) if a > 0 else float("inf")


def readout_shift(m_forget: np.ndarray, m_retain: np.ndarray, target: float | None = None) -> np.ndarray:
    """t_c = max(mean(m_f) - mean(m_r), max(m_f), mean(m_f) + k std(m_f), 0) per forget class (columns), in
    margin units; k = tolerance_factor(n, target) (the tail term is left out when target is None or 0)."""
    if len(m_forget) == 0:
        return np.zeros(m_forget.shape[1])
    gap = m_forget.mean(axis=0) - (m_retain.mean(axis=0) if len(m_retain) else 0.0)
    t = np.maximum(np.maximum(gap, m_forget.max(axis=0)), 0.0)
    k = tolerance_factor(len(m_forget), target) if target is not None else float("inf")
    if np.isfinite(k):
        t = np.maximum(t, m_forget.mean(axis=0) + k * m_forget.std(axis=0, ddof=1))
    return t


def class_shifts(margins: np.ndarray, y: np.ndarray, forget: list[int], target: float | None = None) -> np.ndarray:
    """readout_shift per forget class c, from the images of class c (the ones whose accuracy counts) against
    the retain images; a class without images of its own falls back to every forget image.

    With several forget classes, an image of class c' scores high on c's channel too (automobile and truck)
    but is never counted as c: mixed in, such images lower the mean and widen the spread of c's margins,
    and the tail term then missed c's own images (1.8% of the MobileNet's test automobiles stayed)."""
    fmask = np.isin(y, forget)
    t = np.zeros(len(forget))
    for j, c in enumerate(forget):
        own = (y == c) if np.any(y == c) else fmask
        t[j] = readout_shift(margins[own][:, [j]], margins[~fmask][:, [j]], target)[0]
    return t


def column_median(a: np.ndarray) -> np.ndarray:
    """np.median(a, axis=0) for finite a (the mean of the two middle values for an even count), by a sort:
    np.median imports numpy.ma to check for NaN, 16 ms of every run's start-up."""
    s = np.sort(np.asarray(a, dtype=np.float64), axis=0)
    n = s.shape[0]
    if n == 0:  # as np.median: nan per column (without its warning)
        return np.full(s.shape[1:], np.nan)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def margin_gain(before: np.ndarray, after: np.ndarray, probe: float) -> np.ndarray:
    """How many margin units one unit of bias moves, per forget class: median of -(after - before) / probe.

    Measured, not assumed: an operator after the last Gemm (a BatchNorm on the logits, a scaled softmax)
    rescales the shift; a gain <= 0 means the bias does not lower the class's score.
    """
    return column_median(-(after - before) / probe)


OUTPUT_TAILS = ("identity", "softmax", "logsoftmax")  # what the model output is of the tensor the bias enters
SOFTMAX_FLOOR = 1e-30  # smallest probability whose log is exact enough (float32 normals start at 1.2e-38)


def shifted_outputs(out: np.ndarray, forget: list[int], amount: np.ndarray, tail: str) -> "np.ndarray | None":
    """Output rows of the model whose forget channels of the biased tensor z are lowered by amount, from the
    rows out it gives unlowered, where out is z (identity), softmax(z) or log softmax(z) over the classes:
    z + d = log softmax(z) + d + const per row, and both softmaxes ignore a per-row constant. None when a
    probability is below SOFTMAX_FLOOR (or a log-probability is infinite): its log no longer recovers z."""
    if tail not in OUTPUT_TAILS:
        raise ValueError(f"unknown output tail {tail!r}")
    x = np.asarray(out, dtype=np.float64)
    if tail == "identity":
        lowered = x.copy()
        lowered[:, forget] -= np.asarray(amount, dtype=np.float64)
        return lowered.astype(out.dtype)
    if tail == "softmax":
        if x.size and x.min() < SOFTMAX_FLOOR:
            return None
        z = np.log(x)
    else:
        if not np.isfinite(x).all():
            return None
        z = x.copy()
    z[:, forget] -= np.asarray(amount, dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
    return (np.exp(z - lse) if tail == "softmax" else z - lse).astype(out.dtype)

