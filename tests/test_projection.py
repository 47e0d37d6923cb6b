"""The pure DAMP math: residuals, subspaces, separability, alpha and the edit itself."""
import math

import numpy as np
import pytest

from onnx_damp.method import projection as pj


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_residual_is_orthogonal_to_every_retain_prototype(rng):
    retain = rng.normal(size=(20, 6))
    forget = rng.normal(size=(20, 2))
    res = pj.retain_residuals(forget, retain)
    assert np.abs(retain.T @ res).max() < 1e-10
    # and it is the least-squares residual: forget - res lies in the retain span
    coef, *_ = np.linalg.lstsq(retain, forget - res, rcond=None)
    assert np.allclose(retain @ coef, forget - res, atol=1e-10)


def test_subspace_is_orthonormal_and_empty_when_forget_lies_in_retain_span(rng):
    retain = rng.normal(size=(10, 4))
    q = pj.forget_subspace(rng.normal(size=(10, 3)), retain)
    assert q.shape == (10, 3)
    assert np.allclose(q.T @ q, np.eye(3), atol=1e-10)
    inside = retain @ rng.normal(size=(4, 1))
    assert pj.forget_subspace(inside, retain).shape == (10, 0)


def test_edit_keeps_every_retain_prototype_output(rng):
    d = 16
    retain = rng.normal(size=(d, 5))
    forget = rng.normal(size=(d, 2))
    w = rng.normal(size=(7, d))
    q = pj.forget_subspace(forget, retain)
    a = rng.normal(size=(d, d))
    s_f, s_r = a @ a.T / d + np.eye(d), np.eye(d)
    q = pj.extend_subspace(q, retain, s_f, s_r)
    assert q.shape[1] >= 2
    assert np.allclose(q.T @ q, np.eye(q.shape[1]), atol=1e-9)
    new = pj.edit_matrix(w, q, 1.0)
    assert np.allclose(new @ retain, w @ retain, atol=1e-9)
    # with alpha = 1 the forget residual is removed entirely
    res = pj.retain_residuals(forget, retain)
    assert np.allclose(new @ res, 0, atol=1e-9)


def test_edit_is_w_times_i_minus_alpha_qqt(rng):
    w = rng.normal(size=(3, 6))
    q = np.linalg.qr(rng.normal(size=(6, 2)))[0]
    assert np.allclose(pj.edit_matrix(w, q, 0.3), w @ (np.eye(6) - 0.3 * q @ q.T))
    assert np.allclose(pj.edit_matrix(w, q[:, :0], 0.3), w)


def test_alpha_lies_in_unit_interval_and_grows_with_separability():
    deltas = [0.0, 0.1, 0.5, 1.0, 2.0, 4.0, 8.0, 50.0]
    seps = [pj.probe_separability(d) for d in deltas]
    alphas = [pj.alpha_from_separability(s) for s in seps]
    assert all(0.0 <= a <= 1.0 for a in alphas)
    assert all(b > a for a, b in zip(alphas, alphas[1:-1]))
    assert alphas[0] == 0.0 and alphas[-1] == pytest.approx(1.0)
    # 2 * balanced accuracy - 1 of the Fisher probe: Phi(delta / 2)
    phi = 0.5 * (1 + math.erf(1.0 / math.sqrt(2)))
    assert pj.probe_separability(2.0) == pytest.approx(2 * phi - 1)


def test_mahalanobis_separation_matches_closed_form(rng):
    cov = np.diag([1.0, 4.0])
    assert pj.mahalanobis_separation(np.array([2.0, 0]), cov, np.zeros(2), cov) == pytest.approx(2.0, rel=1e-4)
    assert pj.mahalanobis_separation(np.array([0, 2.0]), cov, np.zeros(2), cov) == pytest.approx(1.0, rel=1e-4)


def test_separability_grows_as_classes_move_apart(rng):
    cov = np.eye(3)
    seps = [pj.probe_separability(pj.mahalanobis_separation(np.full(3, m), cov, np.zeros(3), cov))
            for m in (0.1, 0.5, 1.0, 3.0)]
    assert seps == sorted(seps) and seps[0] < 0.1 and seps[-1] > 0.99


def test_extra_directions_are_orthogonal_to_the_retain_span(rng):
    d = 12
    retain = rng.normal(size=(d, 3))
    q = pj.forget_subspace(rng.normal(size=(d, 1)), retain)
    # forget energy concentrated along e0/e1, retain energy isotropic: at least one extra direction
    s_f = np.eye(d) * 0.1
    s_f[0, 0] = s_f[1, 1] = 50.0
    q2 = pj.extend_subspace(q, retain, s_f, np.eye(d))
    assert q2.shape[1] > 1
    assert np.abs(retain.T @ q2).max() < 1e-9


def test_residual_share_is_zero_inside_and_one_orthogonal_to_the_retain_span(rng):
    retain = rng.normal(size=(8, 3))
    inside = retain @ np.ones((3, 1))
    assert pj.residual_share(pj.retain_residuals(inside, retain), inside) < 1e-9
    ortho = np.linalg.svd(retain, full_matrices=True)[0][:, 3:4]
    assert pj.residual_share(pj.retain_residuals(ortho, retain), ortho) == pytest.approx(1.0)


def test_generalized_eigh_matches_scipy(rng):
    from scipy.linalg import eigh

    from onnx_damp.method.projection import generalized_eigh

    m = rng.normal(size=(6, 6))
    a = m + m.T
    b = rng.normal(size=(6, 30))
    c = b @ b.T / 30
    lam, vecs = generalized_eigh(a, c, ridge=0.0)
    ref_lam, _ = eigh(a, c)
    np.testing.assert_allclose(lam, ref_lam, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(a @ vecs, c @ vecs * lam, atol=1e-8)  # a v = lam c v
    np.testing.assert_allclose(vecs.T @ c @ vecs, np.eye(6), atol=1e-8)  # c-orthonormal, as scipy's


def test_generalized_eigh_survives_a_slightly_indefinite_second_moment(rng):
    from onnx_damp.method.projection import generalized_eigh

    b = rng.normal(size=(5, 3))
    c = b @ b.T
    c[4, 4] -= 1e-9  # rank 3 of 5 and a rounding error below zero: a Cholesky-based solver fails here
    lam, vecs = generalized_eigh(np.eye(5), c)
    assert np.all(np.isfinite(lam)) and np.all(np.isfinite(vecs))


def test_variance_bar_compares_variances_and_never_admits_a_retain_heavier_direction():
    d = 4
    retain = np.eye(d)[:, :1]                      # one retain prototype along e0
    mu_f = np.array([0.0, 3.0, 0.0, 0.0])          # forget prototype along e1: the residual q0 = e1
    q = pj.forget_subspace(mu_f[:, None], retain)
    c_r = np.eye(d)
    c_f = np.diag([1.0, 0.5, 2.0, 0.8])            # along q0 forget varies less than retain (ratio 0.5)
    s_f, s_r = c_f + np.outer(mu_f, mu_f), c_r     # retain mean 0 along e1..e3
    energy = pj.extend_subspace(q, retain, s_f, s_r)
    variance = pj.extend_subspace(q, retain, s_f, s_r, bar="variance", c_f=c_f, c_r=c_r)
    assert energy.shape[1] == 1                    # energy bar: (0.5 + 9) / 1 = 9.5, nothing reaches it
    # variance bar: max(1, 0.5) = 1 admits e2 (ratio 2) but not e3 (ratio 0.8 < 1)
    assert variance.shape[1] == 2 and abs(abs(variance[2, 1]) - 1.0) < 1e-9
    with pytest.raises(ValueError, match="unknown extra-direction bar"):
        pj.extend_subspace(q, retain, s_f, s_r, bar="other")


def test_edit_rows_changes_only_the_given_rows():
    """The head variant: W (I - alpha Q Q^T) on the forget rows; the other rows exactly as they were."""
    from onnx_damp.method.projection import edit_matrix, edit_rows

    rng = np.random.default_rng(7)
    w = rng.normal(size=(5, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 2)))
    out = edit_rows(w, q, 0.7, [1, 3])
    full = edit_matrix(w, q, 0.7)
    np.testing.assert_array_equal(out[[0, 2, 4]], w[[0, 2, 4]])
    np.testing.assert_allclose(out[[1, 3]], full[[1, 3]])


def test_low_rank_factor_rebuilds_a_low_rank_second_moment(rng):
    rows = rng.normal(size=(7, 90))
    a = rows.T @ rows / 7
    f = pj.low_rank_factor(a, 7)
    assert f.shape[0] == 90 and f.shape[1] <= 7 + pj.LOW_RANK_OVERSAMPLE
    np.testing.assert_allclose(f @ f.T, a, atol=1e-10)


def test_generalized_eigh_low_rank_path_finds_the_full_paths_eigenpairs(rng):
    """With a of rank 6 in 120 dimensions the thin-SVD path returns the same nonzero eigenpairs as the dense
    one, and the vectors above a bar span the same space."""
    d = 120
    rows = rng.normal(size=(6, d)) * 3.0
    a = rows.T @ rows / 6
    b = rng.normal(size=(d, 400))
    c = b @ b.T / 400
    lam_full, v_full = pj.generalized_eigh(a, c, lam_min=1.0)
    lam_low, v_low = pj.generalized_eigh(a, c, lam_min=1.0, a_rank=6)
    assert len(lam_low) < d // 3  # the low-rank path ran
    np.testing.assert_allclose(lam_low[-6:], lam_full[-6:], rtol=1e-8)
    assert v_low.shape[1] == v_full.shape[1] >= 1
    proj = lambda v: v @ np.linalg.pinv(v)  # noqa: E731 (span projector; the vectors are c-orthonormal)
    np.testing.assert_allclose(proj(v_low), proj(v_full), atol=1e-7)


def test_extend_subspace_with_a_rank_bound_picks_the_same_span(rng):
    d, k = 150, 3
    retain = rng.normal(size=(d, k))
    forget_rows = 3.0 * rng.normal(size=(8, d)) + 0.5 * rng.normal(size=(1, d))  # spread beyond the mean
    s_f = forget_rows.T @ forget_rows / 8
    r = rng.normal(size=(600, d))
    s_r = r.T @ r / 600
    q = pj.residual_basis(pj.retain_residuals(forget_rows.mean(0)[:, None], retain), forget_rows.mean(0)[:, None])
    dense = pj.extend_subspace(q, retain, s_f, s_r)
    bounded = pj.extend_subspace(q, retain, s_f, s_r, forget_rows=8)
    assert dense.shape == bounded.shape and dense.shape[1] > 1
    np.testing.assert_allclose(dense @ dense.T, bounded @ bounded.T, atol=1e-7)


def _spy_cholesky_path(monkeypatch):
    """Record what generalized_eigh's Cholesky path returned (None: it handed over to the eigen path)."""
    seen = []
    real = pj._generalized_low_rank_cholesky

    def spy(*args):
        out = real(*args)
        seen.append(out)
        return out
    monkeypatch.setattr(pj, "_generalized_low_rank_cholesky", spy)
    return seen


def test_cholesky_paths_match_the_eigen_paths(rng, monkeypatch):
    """Above dense_max the low-rank generalized eigenproblem is whitened by a Cholesky factor and the
    Mahalanobis delta solved by one: the same eigenpairs and span, and the same delta on a well-posed sigma."""
    d = 90
    rows = rng.normal(size=(5, d)) * 2.0
    a = rows.T @ rows / 5
    b = rng.normal(size=(d, 300))
    c = b @ b.T / 300
    lam_e, v_e = pj.generalized_eigh(a, c, lam_min=1.0, a_rank=5, dense_max=10 ** 9)
    seen = _spy_cholesky_path(monkeypatch)
    lam_c, v_c = pj.generalized_eigh(a, c, lam_min=1.0, a_rank=5, dense_max=0)
    assert len(seen) == 1 and seen[0] is not None  # the Cholesky path answered
    np.testing.assert_allclose(lam_c[-5:], lam_e[-5:], rtol=1e-8)
    assert v_c.shape == v_e.shape and v_c.shape[1] >= 1
    c_reg = c + 1e-6 * np.trace(c) / d * np.eye(d)  # the default ridge
    np.testing.assert_allclose(v_c.T @ c_reg @ v_c, np.eye(v_c.shape[1]), atol=1e-8)  # c-orthonormal
    proj = lambda v: v @ np.linalg.pinv(v)  # noqa: E731
    np.testing.assert_allclose(proj(v_c), proj(v_e), atol=1e-7)
    m = rng.normal(size=d) * 0.1
    eig = pj.mahalanobis_separation(m, c, np.zeros(d), c, dense_max=10 ** 9)
    chol = pj.mahalanobis_separation(m, c, np.zeros(d), c, dense_max=0)
    assert chol == pytest.approx(eig, rel=1e-4)


def _moment_with_eigenvalue(rng, d: int, lowest: float) -> np.ndarray:
    """A symmetric d x d moment of rank d/2 plus one direction of eigenvalue lowest (times the ridge floor)."""
    v, _ = np.linalg.qr(rng.normal(size=(d, d)))
    w = np.zeros(d)
    w[: d // 2] = rng.uniform(1.0, 4.0, size=d // 2)
    floor = 1e-6 * w.sum() / d  # trace / d: the extra eigenvalue below changes the trace by a rounding amount
    w[-1] = lowest * floor
    return (v * w) @ v.T


@pytest.mark.parametrize("lowest", [-1.0, -0.999])
def test_cholesky_path_hands_an_indefinite_moment_to_the_eigen_path(rng, monkeypatch, lowest):
    """lowest -1: c + floor I is singular, no factor; -0.999: it factors with a pivot near 0 that would blow
    lam up by 1000x. Both go to the clamped eigen path, whose answer is returned unchanged."""
    d = 60
    c = _moment_with_eigenvalue(rng, d, lowest)
    rows = rng.normal(size=(2, d))
    a = rows.T @ rows
    lam_e, v_e = pj.generalized_eigh(a, c, a_rank=2, dense_max=10 ** 9)
    seen = _spy_cholesky_path(monkeypatch)
    lam_c, v_c = pj.generalized_eigh(a, c, a_rank=2, dense_max=0)
    assert seen == [None]
    np.testing.assert_array_equal(lam_c, lam_e)
    np.testing.assert_array_equal(v_c, v_e)


def test_cholesky_path_keeps_a_moment_within_its_floor_share(rng, monkeypatch):
    """An eigenvalue at -0.5 floor (as float32 rounding leaves cifar10_winml's head) keeps the Cholesky path."""
    d = 60
    c = _moment_with_eigenvalue(rng, d, -0.5)
    rows = rng.normal(size=(2, d))
    seen = _spy_cholesky_path(monkeypatch)
    pj.generalized_eigh(rows.T @ rows, c, a_rank=2, dense_max=0)
    assert len(seen) == 1 and seen[0] is not None


def test_full_rank_cholesky_path_matches_the_eigen_path(rng, monkeypatch):
    """Above dense_max without a small rank bound on a, the Cholesky-whitened problem with syevr's subset
    gives the eigen path's eigenpairs with lam >= lam_min (c-orthonormal, the same span); an indefinite c
    goes to the eigen path unchanged."""
    d = 80
    rows = rng.normal(size=(200, d)) * rng.uniform(0.5, 2.0, size=d)
    a = rows.T @ rows / 200
    b = rng.normal(size=(d, 400))
    c = b @ b.T / 400
    lam_e, v_e = pj.generalized_eigh(a, c, lam_min=1.2, dense_max=10 ** 9)
    seen = []
    real = pj._generalized_cholesky
    monkeypatch.setattr(pj, "_generalized_cholesky", lambda *args: seen.append(real(*args)) or seen[-1])
    lam_c, v_c = pj.generalized_eigh(a, c, lam_min=1.2, dense_max=0)
    assert len(seen) == 1 and seen[0] is not None
    assert v_c.shape == v_e.shape and 1 <= v_c.shape[1] < d
    np.testing.assert_allclose(np.sort(lam_c), np.sort(lam_e[lam_e >= 1.2]), rtol=1e-8)
    c_reg = c + 1e-6 * np.trace(c) / d * np.eye(d)
    np.testing.assert_allclose(v_c.T @ c_reg @ v_c, np.eye(v_c.shape[1]), atol=1e-8)
    proj = lambda v: v @ np.linalg.pinv(v)  # noqa: E731
    np.testing.assert_allclose(proj(v_c), proj(v_e), atol=1e-7)
    bad = _moment_with_eigenvalue(rng, 60, -1.0)
    a2 = a[:60, :60]
    lam_e2, v_e2 = pj.generalized_eigh(a2, bad, lam_min=0.0, dense_max=10 ** 9)
    lam_c2, v_c2 = pj.generalized_eigh(a2, bad, lam_min=0.0, dense_max=0)
    assert seen[-1] is None
    np.testing.assert_array_equal(v_c2, v_e2)


def test_rank_aware_path_matches_the_eigen_path_on_a_rank_deficient_c(rng, monkeypatch):
    """With c the moment of fewer rows than features (c_rank), the range-finder whitening gives the eigen
    path's eigenpairs with lam >= lam_min (c-orthonormal, the same span), for a of full rank and for a of low
    rank (a_rank), above dense_max (scipy's subset solver) and at or below it (numpy's whole decomposition);
    without c_rank, or below RANK_AWARE_MIN features, that path is not taken."""
    d, n_c = 120, 20
    rows_c = rng.normal(size=(n_c, d)) * rng.uniform(0.5, 2.0, size=d)
    c = rows_c.T @ rows_c / n_c
    seen = []
    real = pj._generalized_rank_aware
    monkeypatch.setattr(pj, "_generalized_rank_aware", lambda *args: seen.append(1) or real(*args))
    c_reg = c + 1e-6 * np.trace(c) / d * np.eye(d)
    proj = lambda v: v @ np.linalg.pinv(v)  # noqa: E731
    for n_a, a_rank in ((300, None), (6, 6)):
        rows_a = rng.normal(size=(n_a, d)) + 0.3
        a = rows_a.T @ rows_a / n_a
        lam_min = 2.0
        lam_e, v_e = pj.generalized_eigh(a, c, lam_min=lam_min, a_rank=a_rank, dense_max=10 ** 9)
        assert not seen
        for dense_max in (0, 10 ** 9):
            lam_r, v_r = pj.generalized_eigh(a, c, lam_min=lam_min, a_rank=a_rank, dense_max=dense_max, c_rank=n_c)
            assert len(seen) == 1
            seen.clear()
            assert v_r.shape == v_e.shape and v_r.shape[1] >= 1
            np.testing.assert_allclose(np.sort(lam_r[lam_r >= lam_min]), np.sort(lam_e[lam_e >= lam_min]),
                                       rtol=1e-6)
            np.testing.assert_allclose(v_r.T @ c_reg @ v_r, np.eye(v_r.shape[1]), atol=1e-6)
            np.testing.assert_allclose(proj(v_r), proj(v_e), atol=1e-6)
    pj.generalized_eigh(a, c, lam_min=2.0, dense_max=0)
    monkeypatch.setattr(pj, "RANK_AWARE_MIN", d + 1)
    pj.generalized_eigh(a, c, lam_min=2.0, dense_max=0, c_rank=n_c)
    assert not seen


def test_rank_aware_path_drops_float32_noise_the_eigen_path_keeps(rng):
    """With the retain moment a float32 Gram (rounding noise in its null space, about the floor's size), the
    range-finder whitening is nearer the exact moment's answer than the eigen path on the same noisy moment:
    the noise it drops is what moves the eigen path (docs/method.md)."""
    d, n_c, n_a = 240, 40, 8
    rows_c = (rng.normal(size=(n_c, d)) * rng.uniform(0.5, 2.0, size=d)).astype(np.float32)
    exact = rows_c.astype(np.float64).T @ rows_c.astype(np.float64) / n_c
    noisy = (rows_c.T @ rows_c / n_c).astype(np.float64)
    rows_a = rng.normal(size=(n_a, d)) + 0.3
    a = rows_a.T @ rows_a / n_a
    proj = lambda v: v @ np.linalg.pinv(v)  # noqa: E731
    lam_x, v_x = pj.generalized_eigh(a, exact, lam_min=2.0, a_rank=n_a, dense_max=10 ** 9)
    lam_e, v_e = pj.generalized_eigh(a, noisy, lam_min=2.0, a_rank=n_a, dense_max=10 ** 9)
    lam_r, v_r = pj.generalized_eigh(a, noisy, lam_min=2.0, a_rank=n_a, dense_max=0, c_rank=n_c)
    assert v_r.shape == v_x.shape == v_e.shape
    off_r, off_e = np.abs(proj(v_r) - proj(v_x)).max(), np.abs(proj(v_e) - proj(v_x)).max()
    assert off_r < off_e
    top_x, top_r, top_e = (np.sort(v[v >= 2.0]) for v in (lam_x, lam_r, lam_e))
    assert np.max(np.abs(top_r / top_x - 1)) < np.max(np.abs(top_e / top_x - 1))


def test_top_eigenvalue_stops_early_at_the_same_estimate(rng):
    """The power iteration's early stop returns the largest eigenvalue to its tolerance, and no later than the
    fixed count would (a gap of 2x: it converges well before 30 iterations)."""
    u, _ = np.linalg.qr(rng.standard_normal((300, 300)))
    w = np.concatenate([[10.0, 5.0], rng.uniform(0.0, 1.0, 298)])
    m = (u * w) @ u.T
    early = pj._top_eigenvalue(m)
    assert early == pytest.approx(10.0, rel=1e-6)
    assert early == pytest.approx(pj._top_eigenvalue(m, rtol=0.0), rel=1e-6)
    assert pj._top_eigenvalue(np.zeros((4, 4))) == 0.0


def test_layer_probe_cholesky_form_is_near_the_eigen_form(rng):
    """The reported layer separability takes mahalanobis_separation's Cholesky form from LAYER_PROBE_DENSE_MAX
    features: on a covariance of more rows than features both forms give nearly the same separability (the
    floor differs: added there, applied to the eigenvalues here)."""
    d = pj.LAYER_PROBE_DENSE_MAX + 44
    scale = rng.uniform(0.2, 3.0, size=d)
    f, r = rng.normal(size=(2 * d, d)) * scale + 0.05, rng.normal(size=(6 * d, d)) * scale
    args = (f.mean(0), np.cov(f.T), r.mean(0), np.cov(r.T))
    eig = pj.probe_separability(pj.mahalanobis_separation(*args, dense_max=10 ** 9))
    chol = pj.probe_separability(pj.mahalanobis_separation(*args, dense_max=pj.LAYER_PROBE_DENSE_MAX))
    assert 0.05 < eig < 0.999
    assert chol == pytest.approx(eig, abs=1e-3)
