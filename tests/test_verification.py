"""Verification math (onnx_damp.verification) on small cases whose answers are known."""
import math

import numpy as np
import pytest

from onnx_damp.verify.metrics import summarize
from onnx_damp.verify.measures import (Gates, affine_bias, bias_shift, check_gates, cka_gain, deepest_layers, entropy,
                                    fit_logistic_1d, forget_structure, gates_dict, gates_summary, linear_cka,
                                    match_layers, membership_attack, mia_confidence, mia_entropy, ratio, selectivity,
                                    true_class_probability)


def random_orthogonal(rng, d):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


# ------------------------------------------------------------------------------------------------- CKA
def test_cka_of_identical_features_is_one():
    x = np.random.default_rng(0).normal(size=(50, 8))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n,d", [(60, 6), (10, 30)])  # feature-space and sample-Gram formulas
def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(n, d):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(n, d))
    base = linear_cka(x, y)
    assert 0.0 < base < 1.0
    q1, q2 = random_orthogonal(rng, d), random_orthogonal(rng, d)
    assert linear_cka(3.7 * x @ q1 + 2.0, 0.01 * y @ q2 - 5.0) == pytest.approx(base, rel=1e-9)
    assert linear_cka(y, x) == pytest.approx(base, rel=1e-12)


def test_cka_gram_and_feature_formulas_agree():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(20, 5)), rng.normal(size=(20, 40))
    xc, yc = x - x.mean(0), y - y.mean(0)
    direct = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(direct, rel=1e-10)   # n < 40: Gram path
    assert linear_cka(x[:, :3], y[:, :4]) == pytest.approx(
        np.linalg.norm(yc[:, :4].T @ xc[:, :3]) ** 2
        / (np.linalg.norm(xc[:, :3].T @ xc[:, :3]) * np.linalg.norm(yc[:, :4].T @ yc[:, :4])), rel=1e-10)


def test_cka_of_independent_features_is_small_and_of_constant_features_undefined():
    rng = np.random.default_rng(3)
    assert linear_cka(rng.normal(size=(2000, 3)), rng.normal(size=(2000, 3))) < 0.01
    assert linear_cka(np.ones((10, 3)), rng.normal(size=(10, 3))) is None
    assert linear_cka(rng.normal(size=(1, 3)), rng.normal(size=(1, 3))) is None
    with pytest.raises(ValueError):
        linear_cka(np.zeros((4, 2)), np.zeros((5, 2)))


def test_layer_matching_and_deepest_quarter():
    assert match_layers(4, 4) == ([0, 1, 2, 3], "index")
    assert match_layers(3, 5) == ([0, 2, 4], "depth")
    assert match_layers(5, 3) == ([0, 0, 1, 2, 2], "depth")  # round half to even: 0.5 -> 0, 1.5 -> 2
    assert match_layers(1, 4) == ([3], "depth")
    assert deepest_layers(10) == [7, 8, 9] and deepest_layers(1) == [0] and deepest_layers(4) == [3]
    assert cka_gain([0.9, 0.5, 0.6, 0.8], [0.9, 0.5, 0.4, 0.5]) == pytest.approx(0.3)
    assert cka_gain([0.9, None], [0.9, 0.5]) is None


# ------------------------------------------------------------------------------------------- accuracy
def test_selectivity_is_forget_drop_minus_mean_retain_drop():
    y = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    before = summarize(y.copy(), y, [0])
    after = summarize(np.array([1, 1, 1, 0, 2, 2, 2, 2]), y, [0])   # forget 1 -> 0, retain (1 + 1)/2 -> (0.5 + 1)/2
    s = selectivity(before, after)
    assert s == {"forget_drop": 1.0, "mean_retain_drop": pytest.approx(0.25), "selectivity": pytest.approx(0.75)}


# ------------------------------------------------------------------------------- residual forget structure
def test_forget_structure_recovers_a_known_mahalanobis_distance():
    rng = np.random.default_rng(4)
    delta = 2.0
    f = rng.normal(size=(20000, 2)) + np.array([delta, 0.0])
    r = rng.normal(size=(20000, 2))
    d, sep = forget_structure(f, r)
    assert d == pytest.approx(delta, rel=0.02)
    assert sep == pytest.approx(math.erf(delta / (2 * math.sqrt(2))), rel=0.02)
    # the distance is invariant to an invertible linear map of the features
    a = rng.normal(size=(2, 2)) + 3 * np.eye(2)
    assert forget_structure(f @ a, r @ a)[0] == pytest.approx(d, rel=1e-6)
    assert ratio(d, d) == 1.0 and ratio(1.0, 0.0) is None and forget_structure(f[:1], r) is None


# ------------------------------------------------------------------------------- membership inference
def test_entropy_and_true_class_probability():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert np.allclose(entropy(p), [math.log(4), 0.0, math.log(2)])
    assert np.allclose(true_class_probability(p, np.array([3, 0, 2])), [0.25, 1.0, 0.0])


def test_balanced_logistic_threshold_sits_between_imbalanced_gaussians():
    rng = np.random.default_rng(5)
    t = np.concatenate([rng.normal(0.0, 1.0, 200), rng.normal(2.0, 1.0, 20000)])
    y = np.concatenate([np.ones(200), np.zeros(20000)])
    clf = fit_logistic_1d(t, y)
    threshold = clf.mean - clf.b * clf.std / clf.a     # decision(t) = 0
    assert threshold == pytest.approx(1.0, abs=0.15)   # equal weights: the midpoint, not the majority's side
    unbalanced = fit_logistic_1d(t, y, balanced=False)
    assert unbalanced.mean - unbalanced.b * unbalanced.std / unbalanced.a < 0.0


def test_logistic_recovers_the_generating_model():
    rng = np.random.default_rng(6)
    t = rng.normal(size=40000)
    y = (rng.random(40000) < 1 / (1 + np.exp(-(2.0 * t - 0.5)))).astype(float)
    clf = fit_logistic_1d(t, y, balanced=False, l2=0.0)
    assert clf.a / clf.std == pytest.approx(2.0, rel=0.05)
    assert clf.b - clf.a * clf.mean / clf.std == pytest.approx(-0.5, abs=0.05)


def test_mia_on_separable_synthetic_entropies():
    rng = np.random.default_rng(7)
    members = rng.uniform(0.0, 0.1, 300)        # training samples: confident, low entropy
    non_members = rng.uniform(1.0, 2.0, 300)    # test samples: high entropy
    r = membership_attack(members, non_members, rng.uniform(0.0, 0.1, 50), "p", "entropy")
    assert r.member_rate == 1.0 and r.efficacy == 0.0 and r.attack_balanced_accuracy == 1.0
    assert membership_attack(members, non_members, rng.uniform(1.0, 2.0, 50), "p", "entropy").member_rate == 0.0


def test_mia_protocols_on_probability_rows():
    k = 4
    sharp = np.full((100, k), 0.01 / (k - 1))
    sharp[:, 0] = 0.99                             # members: confident and right (label 0)
    flat = np.full((100, k), 0.3 / (k - 1))
    flat[:, 0] = 0.7                               # non-members: less sure
    labels = np.zeros(100, dtype=int)
    forgotten = np.full((40, k), 0.99 / (k - 1))
    forgotten[:, 0] = 0.01                         # the forget class's own probability is gone
    conf = mia_confidence(sharp, labels, flat, labels, forgotten, np.zeros(40, dtype=int))
    assert conf.member_rate == 0.0 and conf.attack_balanced_accuracy == 1.0
    kept = mia_confidence(sharp, labels, flat, labels, sharp[:40], np.zeros(40, dtype=int))
    assert kept.member_rate == 1.0
    ent = mia_entropy(sharp, flat, sharp[:40])
    assert ent.member_rate == 1.0 and ent.feature == "entropy" and ent.targets == 40


# ----------------------------------------------------------------------------------------- bias shift
def linear_head(rng, n=30, d=5, k=4):
    w, b, h = rng.normal(size=(k, d)), rng.normal(size=k), rng.normal(size=(n, d))
    return w, b, h


def test_bias_only_edit_has_bias_share_one():
    rng = np.random.default_rng(8)
    w, b, h = linear_head(rng)
    labels = np.full(len(h), 2)
    b2 = b.copy()
    b2[2] -= 7.0
    res = bias_shift(w, h, h @ w.T + b, w, h, h @ w.T + b2, labels)
    assert res.available and res.bias_share == pytest.approx(1.0)
    assert res.delta_logit == pytest.approx(-7.0) and res.head_weight == pytest.approx(0.0, abs=1e-12)


def test_weight_only_edits_have_bias_share_zero():
    rng = np.random.default_rng(9)
    w, b, h = linear_head(rng)
    labels = np.full(len(h), 1)
    w2 = w.copy()
    w2[1] *= 0.2                                      # head weight edit
    res = bias_shift(w, h, h @ w.T + b, w2, h, h @ w2.T + b, labels)
    assert res.bias_share == pytest.approx(0.0, abs=1e-12) and res.features == pytest.approx(0.0, abs=1e-12)
    assert res.head_weight == pytest.approx(res.delta_logit)
    h2 = h + rng.normal(size=h.shape)                 # upstream (feature) edit
    res = bias_shift(w, h, h @ w.T + b, w, h2, h2 @ w.T + b, labels)
    assert res.bias_share == pytest.approx(0.0, abs=1e-12) and res.features == pytest.approx(res.delta_logit)


def test_bias_shift_terms_add_up_and_unchanged_logit_has_no_share():
    rng = np.random.default_rng(10)
    w, b, h = linear_head(rng)
    w2, b2, h2 = w + 0.3 * rng.normal(size=w.shape), b - 1.0, h + 0.5 * rng.normal(size=h.shape)
    labels = rng.integers(0, 4, len(h))
    res = bias_shift(w, h, h @ w.T + b, w2, h2, h2 @ w2.T + b2, labels)
    assert res.bias + res.head_weight + res.features == pytest.approx(res.delta_logit)
    assert res.bias == pytest.approx(-1.0)
    same = bias_shift(w, h, h @ w.T + b, w, h, h @ w.T + b, labels)
    assert same.available and same.bias_share is None and same.delta_logit == 0.0


def test_bias_shift_is_unavailable_when_logits_are_not_affine_in_the_last_input():
    rng = np.random.default_rng(11)
    w, b, h = linear_head(rng)
    z = h @ w.T + b
    probs = np.exp(z) / np.exp(z).sum(1, keepdims=True)     # a Softmax output
    assert affine_bias(w, h, z)[0] == pytest.approx(b)
    assert affine_bias(w, h, probs)[0] is None
    res = bias_shift(w, h, z, w, h, probs, np.zeros(len(h), dtype=int))
    assert not res.available and "not W h + b" in res.reason
    assert not bias_shift(w, h, z, w[:, :3], h[:, :3], z, np.zeros(len(h), dtype=int)).available


# ---------------------------------------------------------------------------------------------- gates
def test_gates_pass_fail_and_missing_metric():
    values = {"forget_accuracy": 0.004, "retain_drop": 0.02, "cka_gain": 0.1, "mia_member_rate": None}
    res = check_gates(values, Gates(max_forget_acc=0.01, max_retain_drop=0.01, min_cka_gain=0.05, max_mia=0.1))
    assert [(r.gate, r.passed) for r in res] == [("max_forget_acc", True), ("max_retain_drop", False),
                                                 ("min_cka_gain", True), ("max_mia", False)]
    line = gates_summary(res)
    assert line.startswith("gate failed: ") and "\n" not in line
    assert "--max-retain-drop" in line and "--max-mia" in line and "--max-forget-acc" not in line
    d = gates_dict(res)
    assert d["passed"] is False and set(d["checks"][0]) == {"gate", "metric", "value", "threshold", "passed",
                                                                        "default"}
    assert check_gates(values, None) == [] and gates_summary([]) == ""
    assert gates_dict(check_gates(values, Gates(min_cka_gain=0.1)))["passed"] is True  # >= holds at equality


def test_a_reference_that_still_knows_the_forget_class_is_flagged():
    from onnx_damp.verify.runs import reference_recognises_forget

    y = np.array([0, 0, 1, 1, 2, 2])
    knows = np.eye(3)[y]                      # predicts every class, the forget class 1 included
    forgot = np.eye(3)[[0, 0, 0, 2, 2, 2]]    # sends class 1 elsewhere
    assert "retrained without" in reference_recognises_forget(knows, y, [1])
    assert reference_recognises_forget(forgot, y, [1]) is None
    assert reference_recognises_forget(None, y, [1]) is None


def test_mia_direction_keeps_a_chance_attack_from_calling_far_targets_members():
    """Members and non-members alike, non-members a hair more confident: a free slope is negative (noise) and
    extrapolates to call every near-zero-confidence target a member; members' side fixed, none are."""
    rng = np.random.default_rng(8)
    members = rng.uniform(0.90, 1.00, 2000)
    non_members = members + 0.002
    targets = rng.uniform(0.0, 1e-6, 100)
    free = membership_attack(members, non_members, targets, "p", "confidence")
    assert free.member_rate == 1.0
    held = membership_attack(members, non_members, targets, "p", "confidence", direction=1)
    assert held.member_rate == 0.0 and held.attack_balanced_accuracy == pytest.approx(0.5)
    # a real signal is kept: members more confident than non-members, targets like members
    real = membership_attack(members, members - 0.3, rng.uniform(0.9, 1.0, 100), "p", "confidence", direction=1)
    assert real.member_rate > 0.9
