"""Metrics on small cases whose answers are known."""
import math

import numpy as np
import pytest

from onnx_damp.verify.metrics import js_divergence, kl_divergence, summarize, to_probabilities, worst_retain_drop


def test_js_is_zero_for_equal_and_ln2_for_disjoint_distributions():
    p = np.array([[0.2, 0.8], [1.0, 0.0]])
    assert np.allclose(js_divergence(p, p), 0.0, atol=1e-9)
    assert js_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(math.log(2), rel=1e-6)


def test_kl_matches_closed_form():
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    assert kl_divergence(p, q)[0] == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1))


def test_softmax_only_when_rows_are_not_probabilities():
    probs = np.array([[0.1, 0.9]])
    assert np.array_equal(to_probabilities(probs), probs)
    assert np.allclose(to_probabilities(np.array([[0.0, math.log(3)]])), [[0.25, 0.75]])


def test_summary_forget_retain_and_worst_class():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    before = summarize(np.array([0, 0, 1, 1, 2, 2, 2, 2]), y, [0])
    after = summarize(np.array([1, 2, 1, 0, 2, 2, 2, 1]), y, [0])
    assert after.forget_accuracy == 0.0 and before.forget_accuracy == 1.0
    assert after.retain_accuracy == pytest.approx((0.5 + 0.75) / 2)
    assert after.worst_retain_class == 1
    assert worst_retain_drop(before, after) == (1, pytest.approx(0.5))
