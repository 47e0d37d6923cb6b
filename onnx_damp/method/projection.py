"""Pure DAMP math on numpy arrays: retain-span residuals, forget subspace, probe separability, alpha, edit.

Nothing here knows about ONNX; every function works in one layer's input-feature space (dimension d).
"""
from __future__ import annotations

import math

import numpy as np

RESIDUAL_RTOL = 1e-6  # a residual shorter than this fraction of its prototype carries no direction


def orthonormal_basis(vectors: np.ndarray, rtol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis (d, r) of the column span of vectors (d, k), dropping numerically null directions."""
    if vectors.size == 0:
        return np.zeros((vectors.shape[0], 0))
    u, s, _ = np.linalg.svd(vectors, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return np.zeros((vectors.shape[0], 0))
    return u[:, s > rtol * s[0]]


def retain_residuals(forget_means: np.ndarray, retain_means: np.ndarray) -> np.ndarray:
    """d = mu_f - R R^+ mu_f for each forget prototype column (R: retain prototypes as columns)."""
    basis = orthonormal_basis(retain_means)
    return forget_means - basis @ (basis.T @ forget_means)


def forget_subspace(forget_means: np.ndarray, retain_means: np.ndarray) -> np.ndarray:
    """Orthonormal basis Q of the forget prototypes' residuals against the retain span (rank <= #forget)."""
    return residual_basis(retain_residuals(forget_means, retain_means), forget_means)


def residual_basis(residuals: np.ndarray, forget_means: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the residual columns that are not negligible next to their prototypes."""
    keep = np.linalg.norm(residuals, axis=0) > RESIDUAL_RTOL * _prototype_norms(forget_means)
    if not keep.any():
        return np.zeros((forget_means.shape[0], 0))
    return orthonormal_basis(residuals[:, keep], rtol=RESIDUAL_RTOL)


def residual_share(residuals: np.ndarray, forget_means: np.ndarray) -> float:
    """Smallest ||mu_f - R R^+ mu_f|| / ||mu_f|| over forget prototypes: how much of a forget class lies
    outside the retain span (near 0: the class is a combination of retain prototypes, hard to remove)."""
    return float(np.min(np.linalg.norm(residuals, axis=0) / _prototype_norms(forget_means)))


def _prototype_norms(forget_means: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(forget_means, axis=0), 1e-300)


DENSE_EIGH_MAX = 1024  # above this width, Cholesky factors (or c's range, _generalized_rank_aware) stand in for
# d x d eigen-decompositions (scipy.linalg's import, 0.2-0.3 s, is paid only there: an eigen-decomposition costs
# 0.4 s at 1,536, 1.4 s at 2,400; 1,536 until the fifth 2026-12-03 session: swin_t's planning 21.4 -> 16.5 s).
# Also mahalanobis_separation's default: the reported layer separability and verify.measures' probe of a
# 1,025-1,536-wide space now use its Cholesky form (floor added, not applied; swin_t: 0.415 -> 0.385)


LAYER_PROBE_DENSE_MAX = 512  # the layer's whole-space probe (reported, never sets alpha) takes mahalanobis_separation's
# Cholesky form above this width: densenet121's 121 layers (to 1,024 wide) 2.95 -> 0.43 s at 256, the reported value
# moved by at most 0.0025 (0.973 -> 0.971); 512, not 256, so that a model whose widest inputs are 512 (resnet18)
# does not pay scipy's import for it (densenet121's planning the same either way, 4.7-5.3 s); the probe within
# span(Q), which sets alpha, keeps DENSE_EIGH_MAX


def _linalg():
    """scipy.linalg, imported on first use (0.1-0.3 s: paid only where a layer is wider than LAYER_PROBE_DENSE_MAX),
    its own OpenBLAS under the host's thread limit (runtime.blas: a limit taken before it was loaded misses it)."""
    import scipy.linalg

    from onnx_damp.runtime import blas

    blas.refresh("scipy.linalg")
    return scipy.linalg


def _symmetrised(m: np.ndarray) -> np.ndarray:
    """(m + m^T) / 2 in one new array (the same values as 0.5 * (m + m.T), one d x d temporary fewer)."""
    out = np.add(m, m.T)
    out *= 0.5
    return out


def _plus_diagonal(m: np.ndarray, value: float, copy: bool = True) -> np.ndarray:
    """m + value * I without forming I (in place when copy is False)."""
    out = np.array(m, dtype=np.float64, copy=True) if copy else m
    out.flat[::out.shape[0] + 1] += value
    return out


def _cholesky(m: np.ndarray) -> "np.ndarray | None":
    """Lower Cholesky factor of symmetric m, or None where m is not numerically positive definite.
    About 10x cheaper than an eigen-decomposition (0.13 s against 1.5 s at d = 2,400 here)."""
    linalg = _linalg()
    try:
        return linalg.cholesky(m, lower=True, check_finite=False)
    except linalg.LinAlgError:
        return None


TOP_EIGEN_RTOL = 1e-6  # _top_eigenvalue stops when an iteration moves its estimate by less than this share


def _top_eigenvalue(m: np.ndarray, iterations: int = 30, rtol: float = TOP_EIGEN_RTOL) -> float:
    """Largest eigenvalue of symmetric positive semi-definite m (power iteration from a seeded random start,
    stopped once an iteration moves the estimate by less than rtol of it; a ridge's scale, so a few per cent
    low is fine). Each step reads all of m: cifar10_winml's 2,400-wide layer converges to 1e-6 in 12 of 30."""
    v = np.random.default_rng(0).standard_normal(m.shape[0])
    v /= np.linalg.norm(v)
    lam = 0.0
    for _ in range(iterations):
        w = m @ v
        prev, lam = lam, float(np.linalg.norm(w))
        if lam == 0.0:
            return 0.0
        v = w / lam
        if abs(lam - prev) <= rtol * lam:
            break
    return float(v @ m @ v)


def mahalanobis_separation(mean_f: np.ndarray, cov_f: np.ndarray, mean_r: np.ndarray, cov_r: np.ndarray,
                           ridge: float = 1e-6, dense_max: int = DENSE_EIGH_MAX) -> float:
    """Delta of the Fisher linear discriminant: sqrt(dm^T S^-1 dm) with S the averaged within-group covariance.

    S is regularised as S + ridge * trace(S)/d * I with its eigenvalues floored at ridge * their largest; above
    dense_max dimensions the floor is added instead (S + ridge (trace(S)/d + lam_max) I, lam_max by power
    iteration) and S^-1 dm comes from a Cholesky solve, not an eigen-decomposition (the eigen path where
    the factorisation fails). Only the layer's whole-space separability (reported) is that wide."""
    dm = mean_f - mean_r
    sigma = np.add(cov_f, cov_r)
    sigma *= 0.5  # 0.5 (cov_f + cov_r), one d x d array instead of two
    d = sigma.shape[0]
    sigma = _plus_diagonal(sigma, ridge * max(np.trace(sigma) / d, 1e-300), copy=False)
    if d > dense_max:
        sym = _symmetrised(sigma)
        chol = _cholesky(_plus_diagonal(sym, ridge * max(_top_eigenvalue(sym), 1e-300), copy=False))
        if chol is not None:
            z = _linalg().solve_triangular(chol, dm, lower=True, check_finite=False)
            return float(math.sqrt(max(float(z @ z), 0.0)))
    w, v = np.linalg.eigh(sigma)
    w = np.maximum(w, ridge * max(w.max(), 1e-300))
    z = v.T @ dm
    return float(math.sqrt(max(np.sum(z * z / w), 0.0)))


def probe_separability(delta: float) -> float:
    """Separability in [0, 1): 2 * BalancedAcc - 1 of the Fisher probe under equal-covariance Gaussians.

    The probe's balanced accuracy is Phi(delta / 2), so s = 2 Phi(delta/2) - 1 = erf(delta / (2 sqrt 2)).
    """
    return math.erf(delta / (2.0 * math.sqrt(2.0)))


def alpha_from_separability(s: float) -> float:
    """Depth-aware edit strength: alpha = s, clipped to [0, 1] (no free parameter)."""
    return float(min(1.0, max(0.0, s)))


def edit_matrix(w: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """W (I - alpha Q Q^T) for W as [rows, d] and orthonormal Q (d, r), in float64 (or stacks of both:
    [G, rows, d] with [G, d, r], one product per leading index)."""
    w64 = np.asarray(w, dtype=np.float64)
    if q.shape[-1] == 0 or alpha == 0.0:
        return w64.copy()
    return w64 - alpha * (w64 @ q) @ np.swapaxes(q, -1, -2)


def edit_rows(w: np.ndarray, q: np.ndarray, alpha: float, rows) -> np.ndarray:
    """edit_matrix on the given rows of W only (the other rows unchanged), in float64 (stacks as edit_matrix)."""
    w64 = np.asarray(w, dtype=np.float64).copy()
    if q.shape[-1] == 0 or alpha == 0.0:
        return w64
    idx = np.asarray(list(rows), dtype=np.int64)
    w64[..., idx, :] = w64[..., idx, :] - alpha * (w64[..., idx, :] @ q) @ np.swapaxes(q, -1, -2)
    return w64


def energy_ratio(v: np.ndarray, s_f: np.ndarray, s_r: np.ndarray) -> float:
    """Forget-to-retain mean energy along unit direction v: (v^T S_f v) / (v^T S_r v)."""
    return float((v @ s_f @ v) / max(v @ s_r @ v, 1e-300))


LOW_RANK_SHARE = 1 / 3   # generalized_eigh takes the low-rank path when a's rank bound is at most this share of d
LOW_RANK_OVERSAMPLE = 16  # extra columns of the range finder beyond the rank bound
RANK_AWARE_MIN = 0  # narrowest input width whitened by c's range (_generalized_rank_aware) where c's rank allows
# (0: any; a seam that turns the path off in tests; no sample or zoo layer has so few retain rows)
RANK_AWARE_SHARE = 0.5  # generalized_eigh whitens by c's range (_generalized_rank_aware) when its rank bound is
# at most this share of d (0.8 on convnext_tiny: no faster, more plans moved)


def low_rank_factor(a: np.ndarray, rank: int, oversample: int = LOW_RANK_OVERSAMPLE) -> np.ndarray:
    """L (d, <= rank + oversample) with L L^T = a, for symmetric positive semi-definite a of rank at most rank
    (a second moment of that many rows), to a's rounding: a range finder (Halko, Martinsson & Tropp 2011,
    seeded) spans range(a), a's compression onto it is decomposed, and its non-positive part (rounding) dropped.
    O(d^2 rank) instead of an O(d^3) eigen-decomposition."""
    u, w = range_eigenpairs(a, rank, oversample)
    return u * np.sqrt(w)


def range_eigenpairs(a: np.ndarray, rank: int, oversample: int = LOW_RANK_OVERSAMPLE
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(U, w): the positive eigenpairs of symmetric positive semi-definite a of rank at most rank, U (d, k)
    orthonormal, from a seeded range finder's compression of a (low_rank_factor's; U diag(w) U^T = a to a's
    rounding, the non-positive part dropped)."""
    d = a.shape[0]
    omega = np.random.default_rng(0).standard_normal((d, min(d, rank + oversample)))
    basis, _ = np.linalg.qr(a @ omega)
    w, e = np.linalg.eigh(basis.T @ a @ basis)
    keep = w > 0
    return basis @ e[:, keep], w[keep]


def generalized_eigh(a: np.ndarray, c: np.ndarray, ridge: float = 1e-6, lam_min: float | None = None,
                     a_rank: int | None = None, dense_max: int = DENSE_EIGH_MAX,
                     c_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Solve a v = lam c v for symmetric a and symmetric positive semi-definite c (numpy only).

    c is regularised as c + ridge * trace(c)/d * I, after clamping its eigenvalues at 0: rounding (float32
    in-graph Grams) or rank deficiency (few rows) can leave it slightly indefinite. Whitening by
    W = V diag(w)^(-1/2) (W^T c W = I) turns the problem into an ordinary symmetric one, W^T a W u = lam u,
    and v = W u; eigenvectors are c-orthonormal, as scipy's are. lam_min: return only the eigenvectors with
    lam >= lam_min (every eigenvalue is still returned first, and the vectors' columns match lam[lam >= lam_min]).
    a_rank: a bound on the rank of a (positive semi-definite, the second moment of that many rows); when it is
    small against d, a = L L^T (low_rank_factor) and the nonzero eigenpairs of W^T a W = (W^T L)(W^T L)^T come
    from the thin SVD of W^T L: the same eigenpairs in O(d^2 a_rank) instead of two d x d x d products and a
    second d x d eigen-decomposition; only those eigenvalues (ascending) are returned. On that path above
    dense_max dimensions, c + ridge * trace(c)/d * I = R R^T (Cholesky, without the clamp at 0: where it fails,
    the eigen path) whitens instead (W = R^-T): W^T L = R^-1 L and v = R^-T u by triangular solves, O(d^3 / 3).
    Above dense_max without a small a_rank, the same factor whitens a itself (R^-1 a R^-T, two triangular
    solves) and, given lam_min, only the eigenpairs with lam >= lam_min are computed (LAPACK syevr), so only
    those eigenvalues are returned: no eigen-decomposition of c and no complete one of the whitened a.
    c_rank: a bound on the rank of c (the second moment of that many rows); when it is small against d, c's
    range comes from a range finder and the whitening is exact on it and the floor on its complement
    (_generalized_rank_aware): O(d^2 c_rank) where the eigen path pays a d x d eigen-decomposition of c (above
    dense_max a c with fewer rows than features also fails the Cholesky check). From the fifth 2026-12-03
    session above dense_max only; since the first 2026-12-04 one at any width (densenet121 with 40 images a
    class: the 288-row retain moments of its 544-1,024-wide inputs).
    """
    d = a.shape[0]
    low_rank = a_rank is not None and a_rank + LOW_RANK_OVERSAMPLE <= LOW_RANK_SHARE * d
    if c_rank is not None and d >= RANK_AWARE_MIN and c_rank + LOW_RANK_OVERSAMPLE <= RANK_AWARE_SHARE * d:
        # at or below dense_max the whitened a is decomposed whole (numpy; scipy's subset solver only above)
        lam, vecs = _generalized_rank_aware(a, c, ridge, lam_min if d > dense_max else None,
                                            a_rank if low_rank else None, c_rank)
        return lam, (vecs if lam_min is None else vecs[:, lam >= lam_min])
    if d > dense_max:
        found = (_generalized_low_rank_cholesky(a, c, ridge, a_rank) if low_rank
                 else _generalized_cholesky(a, c, ridge, lam_min))
        if found is not None:
            lam, vecs = found
            return lam, (vecs if lam_min is None else vecs[:, lam >= lam_min])
    w, v = np.linalg.eigh(_symmetrised(c))
    w = np.maximum(w, 0.0) + ridge * max(float(np.mean(w)), 1e-300)
    whiten = v / np.sqrt(w)
    if low_rank:
        lam, u = _ascending_gram_eigenpairs(whiten.T @ low_rank_factor(_symmetrised(a), a_rank))
    else:
        lam, u = np.linalg.eigh(whiten.T @ _symmetrised(a) @ whiten)
    if lam_min is not None:
        u = u[:, lam >= lam_min]
    return lam, whiten @ u


# the Cholesky path is taken where the regularised moment's smallest eigenvalue is at least this share of the
# ridge floor: rounding may leave c indefinite, and where it does the eigen path clamps at 0 (every
# regularised eigenvalue >= the floor) while a factor of c + floor I keeps w + floor; at this share the two
# differ by at most 4x in any direction (cifar10_winml's 2,400-wide head: 0.45-0.48, the plans agree; a
# pivot near 0 would blow lam up by orders of magnitude)
CHOLESKY_FLOOR_SHARE = 0.25


def _smallest_eigenvalue(chol: np.ndarray, iterations: int = 30) -> float:
    """Smallest eigenvalue of R R^T from its lower Cholesky factor R: inverse power iteration (two triangular
    solves a step, O(d^2)) from a seeded random start. The Rayleigh quotient bounds it from above, and the
    iteration converges fastest exactly where one eigenvalue sits far below the others."""
    solve_triangular = _linalg().solve_triangular

    v = np.random.default_rng(0).standard_normal(chol.shape[0])
    v /= np.linalg.norm(v)
    inv = 0.0
    for _ in range(iterations):
        w = solve_triangular(chol, solve_triangular(chol, v, lower=True, check_finite=False), lower=True,
                             trans="T", check_finite=False)
        inv = float(np.linalg.norm(w))
        if not np.isfinite(inv) or inv == 0.0:
            return 0.0
        v = w / inv
    return 1.0 / inv


def _generalized_low_rank_cholesky(a: np.ndarray, c: np.ndarray, ridge: float, a_rank: int
                                   ) -> "tuple[np.ndarray, np.ndarray] | None":
    """generalized_eigh's low-rank path whitened by a Cholesky factor of the regularised c. None (the eigen
    path) where c + floor I, floor = ridge trace(c)/d, is not numerically positive definite, or where its
    smallest eigenvalue is below CHOLESKY_FLOOR_SHARE of the floor (rounding left c too indefinite: a pivot
    near 0 would blow lam up where the eigen path's clamp at 0 keeps it bounded)."""
    solve_triangular = _linalg().solve_triangular

    chol = _checked_cholesky(c, ridge)
    if chol is None:
        return None
    white = solve_triangular(chol, low_rank_factor(_symmetrised(a), a_rank), lower=True, check_finite=False)
    lam, u = _ascending_gram_eigenpairs(white)
    return lam, solve_triangular(chol, u, lower=True, trans="T", check_finite=False)


def _generalized_cholesky(a: np.ndarray, c: np.ndarray, ridge: float, lam_min: float | None
                          ) -> "tuple[np.ndarray, np.ndarray] | None":
    """generalized_eigh above dense_max for a of any rank: whitened by the Cholesky factor R of the regularised c
    (checked as in _generalized_low_rank_cholesky; None: the eigen path), R^-1 a R^-T decomposed, only for
    eigenvalues >= lam_min when given (syevr's subset, half-open below: the bound is moved one float down).
    About 3 d^3 flops against the eigen path's two complete d x d eigen-decompositions and two d x d x d products
    (3,072 features, 584 eigenpairs kept: 4.8 s against about 9.5 s)."""
    solve_triangular = _linalg().solve_triangular

    chol = _checked_cholesky(c, ridge)
    if chol is None:
        return None
    half = solve_triangular(chol, _symmetrised(a), lower=True, check_finite=False)    # R^-1 a
    m = solve_triangular(chol, half.T, lower=True, check_finite=False)                # R^-1 a R^-T (a symmetric)
    lam, u = _symmetric_eigenpairs(m, lam_min)
    return lam, solve_triangular(chol, u, lower=True, trans="T", check_finite=False)


def _symmetric_eigenpairs(m: np.ndarray, lam_min: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of m symmetrised, all of them (numpy), or only those with lam >= lam_min (LAPACK syevr's subset
    by value; its interval is open below, so the bound is moved one float down)."""
    m = _symmetrised(m)
    if lam_min is None:
        return np.linalg.eigh(m)
    eigh = _linalg().eigh

    return eigh(m, subset_by_value=(float(np.nextafter(lam_min, -np.inf)), np.inf), driver="evr",
                check_finite=False)


def _generalized_rank_aware(a: np.ndarray, c: np.ndarray, ridge: float, lam_min: float | None, a_rank: int | None,
                            c_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """generalized_eigh for c of rank at most c_rank << d: c = U diag(s) U^T on its range (range_eigenpairs,
    low_rank_factor's range finder; s <= 0 dropped, which is the eigen path's clamp at 0), so that the
    regularised c + floor I (floor = ridge trace(c)/d, the eigen path's) has the symmetric inverse square root
    W = floor^-1/2 I + U diag(g) U^T, g = (s + floor)^-1/2 - floor^-1/2, applied in O(d c_rank) a column.
    W^T a W is then decomposed as the eigen path decomposes it (thin SVD of W L for a = L L^T of rank a_rank;
    else whole, only lam >= lam_min when given) and v = W u. The one difference from the eigen path: rounding
    noise in c's null space (float32 Grams) is dropped, where the eigen path keeps its positive part on top of
    the floor."""
    d = c.shape[0]
    sym = _symmetrised(c)
    floor = ridge * max(float(np.trace(sym)) / d, 1e-300)
    u_c, s = range_eigenpairs(sym, c_rank)  # eigenvalues <= 0 dropped: clamped at 0, their g would be 0
    g = 1.0 / np.sqrt(s + floor) - 1.0 / math.sqrt(floor)

    def whiten(x: np.ndarray) -> np.ndarray:
        return x / math.sqrt(floor) + u_c @ (g[:, None] * (u_c.T @ x))

    if a_rank is not None:
        lam, u = _ascending_gram_eigenpairs(whiten(low_rank_factor(_symmetrised(a), a_rank)))
        return lam, whiten(u)
    lam, u = _symmetric_eigenpairs(whiten(whiten(_symmetrised(a)).T), lam_min)
    return lam, whiten(u)


def _checked_cholesky(c: np.ndarray, ridge: float) -> "np.ndarray | None":
    """The lower Cholesky factor of c + floor I, floor = ridge trace(c)/d, or None where it fails or its smallest
    eigenvalue is below CHOLESKY_FLOOR_SHARE of the floor (then the eigen path's clamp at 0 is needed)."""
    d = c.shape[0]
    sym = _symmetrised(c)
    floor = ridge * max(float(np.trace(sym)) / d, 1e-300)
    chol = _cholesky(_plus_diagonal(sym, floor, copy=False))
    if chol is None or _smallest_eigenvalue(chol) < CHOLESKY_FLOOR_SHARE * floor:
        return None
    return chol


def _ascending_gram_eigenpairs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero eigenpairs of m m^T from the thin SVD of m, eigenvalues ascending (as eigh orders them)."""
    u, sv, _ = np.linalg.svd(m, full_matrices=False)
    return sv[::-1] ** 2, u[:, ::-1]


def householder_complement(base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact form Q = I - V T V^T of the orthogonal matrix whose first k columns span base (d, k, full
    column rank) and whose other d - k columns are an orthonormal basis of the complement.

    From numpy's Householder QR (LAPACK geqrf, O(d k^2)) and LAPACK larft's recurrence for T, so that Q^T M Q
    costs O(d^2 k) (complement_moments) where an explicit complement basis costs two d x d x d products.
    """
    h, tau = np.linalg.qr(base, mode="raw")
    k = base.shape[1]
    vv = np.tril(h.T, -1)[:, :k]
    vv[np.arange(k), np.arange(k)] = 1.0
    t = np.zeros((k, k))
    for i in range(k):
        t[:i, i] = -tau[i] * (t[:i, :i] @ (vv[:, :i].T @ vv[:, i]))
        t[i, i] = tau[i]
    return vv, t


def complement_moments(vv: np.ndarray, t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """comp^T m comp, comp the last d - k columns of Q = I - V T V^T (householder_complement), for symmetric m.

    Q^T m Q = m - V T^T (V^T m) - (m V) T V^T + V T^T (V^T m V) T V^T, in O(d^2 k); the trailing block is kept.
    """
    k = vv.shape[1]
    mv = m @ vv
    vmv = vv.T @ mv
    left = mv @ t                       # m V T
    full_k = vv[k:]                     # rows of V (and of Q's identity part) for the complement coordinates
    # rows/columns k: of Q^T m Q without forming it: (m - V T^T V^T m - m V T V^T + V T^T V^T m V T V^T)[k:, k:]
    inner = t.T @ vmv @ t
    return (m[k:, k:] - full_k @ left[k:].T - left[k:] @ full_k.T + full_k @ inner @ full_k.T)


def from_complement(vv: np.ndarray, t: np.ndarray, x: np.ndarray) -> np.ndarray:
    """comp @ x for comp the complement columns of Q = I - V T V^T: Q @ [0; x], in O(d k m)."""
    k = vv.shape[1]
    full = np.zeros((vv.shape[0], x.shape[1]))
    full[k:] = x
    return full - vv @ (t @ (vv.T @ full))


def extend_subspace(q: np.ndarray, retain_means: np.ndarray, s_f: np.ndarray, s_r: np.ndarray,
                    ridge: float = 1e-6, bar: str = "energy", c_f: np.ndarray | None = None,
                    c_r: np.ndarray | None = None, forget_rows: int | None = None,
                    retain_rows: int | None = None) -> np.ndarray:
    """Add forget-variance directions that are at least as forget-specific as the prototype residuals.

    Within the orthogonal complement of [retain prototypes, Q] solve S_f v = lam S_r v (S_f, S_r:
    uncentred second moments per row of the forget and retain groups) and keep every v with
    lam >= lam_0, lam_0 = the smallest energy ratio of Q's own columns. The bar is set by the
    data (the residual directions themselves), so no rank knob is needed; retain prototypes stay
    untouched because every added direction is orthogonal to their span.
    bar "variance" (an ablation, needs the covariances c_f, c_r): lam_0 = max(1, the smallest ratio
    q^T C_f q / q^T C_r q), i.e. the residual directions' variance ratio without the forget mean's
    square; every class mean is 0 along the complement, so lam there is a variance ratio too.
    The complement basis is the Householder one (householder_complement): the chosen span does not depend
    on which orthonormal complement basis is used, and this one costs O(d^2 k) instead of O(d^3).
    forget_rows: the number of rows behind s_f, a bound on its rank (generalized_eigh's a_rank: one row per
    image on a wide Gemm input leaves S_f of low rank); retain_rows: the same for s_r (generalized_eigh's c_rank).
    """
    d = q.shape[0]
    if bar == "variance":
        if c_f is None or c_r is None:
            raise ValueError("the variance bar needs the covariances c_f and c_r")
        lam0 = max(1.0, min(energy_ratio(q[:, i], c_f, c_r) for i in range(q.shape[1])))
    elif bar == "energy":
        lam0 = min(energy_ratio(q[:, i], s_f, s_r) for i in range(q.shape[1]))
    else:
        raise ValueError(f"unknown extra-direction bar {bar!r}")
    base = orthonormal_basis(np.hstack([retain_means, q]))
    if base.shape[1] >= d:
        return q
    vv, t = householder_complement(base)
    a = complement_moments(vv, t, s_f)
    c = complement_moments(vv, t, s_r)
    _, chosen = generalized_eigh(a, c, ridge, lam_min=lam0, a_rank=forget_rows, c_rank=retain_rows)
    if chosen.shape[1] == 0:
        return q
    return np.hstack([q, orthonormal_basis(from_complement(vv, t, chosen))])
