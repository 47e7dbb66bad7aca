"""LoOP novelty scoring and fitting, fastzsl vs peers.

Groups
------
``loop fit N_ref=..`` (the reference set that ``loop score`` scores against)
    fastzsl ``LoOP(n_neighbors=20, backend=b).fit(ref)`` (exact kNN graph + LoOP);
    peer A (baseline): faiss IndexFlatL2 self-search (k+1, self dropped) + fastzsl
    ``loop_fit(D, I, backend="numpy")``; peer B: scikit-learn
    ``LocalOutlierFactor(n_neighbors=20, novelty=True).fit(ref)``. At full size each fit
    takes minutes on 2 cores, so this group runs ONE round without warm-up (5 + 1 with
    --quick); the fitted models are reused by the scoring group.
``loop score N_ref=.. N_q=..``
    Timed: fastzsl ``LoOP.outlier_probability(Q)`` (kNN of the new points + scoring);
    peer A (baseline): faiss ``IndexFlatL2.search(Q, 20)`` + fastzsl
    ``loop_score(D, I, fit, backend="numpy")``; peer B: scikit-learn LOF
    ``score_samples(Q)`` (a different score, LOF not LoOP, same neighbourhood work).
``loop fit N=10000``
    In-sample LoOP of 10k points: fastzsl ``LoOP.fit`` per backend vs PyNomaly 0.4.0
    ``LocalOutlierProbability(X, extent=3, n_neighbors=20, ...).fit()``, default
    configuration (use_numba=False: scipy cdist in chunks) and its fastest one
    (use_numba=True, n_jobs=-1: parallel Numba kernel, JIT compiled in the warm-up);
    the baseline is the faster of the two, the Numba one. Also scikit-learn LOF fit.

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...; the group's
first test checks and times all its rows), so a fast or slow phase of the shared machine
falls on every row alike.

Correctness before time: every case is checked against fastzsl's NumPy reference on the
same kind of inputs before it is timed (see each test). faiss computes squared distances
as ||q||^2 - 2 q.r + ||r||^2 in float32 (relative error ~1e-4 at this data scale), so a few
near-tied k-th neighbours differ from the exact graph; faiss-based LoOP is therefore
checked with a mean-absolute-difference bound, and the max difference is recorded in
extra_info.
"""
import numpy as np
import pytest

import fastzsl
from fastzsl.testing import backend_is_available, gamma, unit_roundoff

from _harness import Candidate

EXACT_ATOL = 1e-6       # fastzsl backends vs NumPy reference, LoOP probabilities
FAISS_MEAN_ATOL = 1e-3  # faiss-graph LoOP vs exact-graph LoOP: mean |diff|
PYNOMALY_ATOL = 1e-6    # PyNomaly vs fastzsl (float32 input)


def _unavailable(case):
    """Why a fastzsl backend case cannot run here, or None."""
    if case in ("cython", "numba", "numpy") and not backend_is_available(case):
        return f"backend {case!r} unavailable"
    return None


def _faiss_fit(X, k, extent=3.0):
    """Peer A fit: faiss IndexFlatL2 self-search (k+1, self dropped) + NumPy loop_fit."""
    import faiss
    X = np.ascontiguousarray(X, dtype=np.float32)
    index = faiss.IndexFlatL2(X.shape[1])
    index.add(X)
    D, I = index.search(X, k + 1)
    is_self = I == np.arange(X.shape[0])[:, None]
    keep = np.where(is_self.any(axis=1, keepdims=True), ~is_self, np.arange(k + 1) < k)
    D = np.maximum(D[keep].reshape(-1, k), 0)
    I = I[keep].reshape(-1, k)
    return fastzsl.loop_fit(D, I, extent=extent, backend="numpy")


def _faiss_score(index, Q, k, fit):
    """Peer A score: faiss search + fastzsl NumPy LoOP arithmetic."""
    D, I = index.search(Q, k)
    np.maximum(D, 0, out=D)
    return fastzsl.loop_score(D, I, fit, backend="numpy")


def _lof(k):
    from sklearn.neighbors import LocalOutlierFactor
    return LocalOutlierFactor(n_neighbors=k, novelty=True)


def _check_lof_neighbours(lof, Q, knn_expected, k):
    """LOF is not LoOP: check its neighbour search agrees with the exact kNN."""
    D_ref, I_ref = knn_expected
    dist, ind = lof.kneighbors(Q, k)
    # scikit-learn expands ||q||^2 - 2 q.r + ||r||^2 in float64 (float32 input upcast):
    # squares within gamma_(d+2) 2 (||q||^2 + ||r||^2), then sqrt and square again (two
    # roundings), against the reference's exact double sum rounded to its dtype
    R = lof._fit_X.astype(np.float64)
    norms = max((A.astype(np.float64) ** 2).sum(axis=1).max() for A in (Q, R))
    atol = 2 * gamma(Q.shape[1] + 2, np.float64) * 2 * norms
    np.testing.assert_allclose(dist ** 2, D_ref, atol=atol,
                               rtol=4 * unit_roundoff(D_ref.dtype) + 4 * unit_roundoff(np.float64))
    same = (np.sort(ind, axis=1) == np.sort(I_ref, axis=1)).all(axis=1).mean()
    assert same >= 0.99, f"LOF neighbour sets agree on only {same:.1%} of rows"


@pytest.fixture(scope="session")
def small_expected(cfg, reference):
    """NumPy-reference in-sample LoOP of the first 2000 reference rows (pre-timing checks)."""
    X = np.ascontiguousarray(reference[:2000])
    return X, fastzsl.LoOP(n_neighbors=cfg.k, backend="numpy").fit(X).probabilities_


@pytest.fixture(scope="session")
def fitted():
    """Models fitted on the full reference, shared by the fit and score groups."""
    return {}


def _fit_case(case, cfg):
    """(label, fit_fn(X) -> model, probabilities_of(model), extra, baseline)."""
    if case == "faiss+numpy":
        return ("peer A: faiss IndexFlatL2 self-search + fastzsl loop_fit(numpy)",
                lambda X: _faiss_fit(X, cfg.k), lambda m: m.probabilities,
                dict(peer="faiss-cpu + fastzsl numpy LoOP"), True)
    if case == "sklearn-LOF":
        return ("peer B: sklearn LocalOutlierFactor(novelty=True).fit",
                lambda X: _lof(cfg.k).fit(X), None, dict(peer="scikit-learn"), False)
    return (f"fastzsl LoOP.fit ({case})",
            lambda X: fastzsl.LoOP(n_neighbors=cfg.k, backend=case).fit(X),
            lambda m: m.probabilities_, dict(peer="fastzsl", backend=case), False)


def _get_fitted(case, cfg, reference, fitted):
    if case not in fitted:
        fitted[case] = _fit_case(case, cfg)[1](reference)
    return fitted[case]


# ------------------------------------------------------------------ fit of the reference
FIT_CASES = ["faiss+numpy", "cython", "numba", "sklearn-LOF"]


def _check_small_fit(case, fit_fn, probs_of, cfg, queries, small_expected):
    """Correctness before time, on the first 2000 reference rows."""
    X_small, p_small = small_expected
    small = fit_fn(X_small)
    if case == "sklearn-LOF":
        Qc = queries[:cfg.n_check]
        _check_lof_neighbours(small, Qc, fastzsl.knn(Qc, X_small, cfg.k, backend="numpy"),
                              cfg.k)
        return
    diff = np.abs(probs_of(small) - p_small)
    if case == "faiss+numpy":
        assert diff.mean() <= FAISS_MEAN_ATOL, diff.mean()
    else:
        assert diff.max() <= EXACT_ATOL, diff.max()


@pytest.mark.parametrize("case", FIT_CASES)
def test_loop_fit_reference(case, bench, cfg, reference, queries, knn_expected,
                            small_expected, fitted):
    def build(stack):
        out = {}
        for c in FIT_CASES:
            if _unavailable(c):
                out[c] = _unavailable(c)
                continue
            label, fit_fn, probs_of, extra, baseline = _fit_case(c, cfg)
            _check_small_fit(c, fit_fn, probs_of, cfg, queries, small_expected)
            out[c] = Candidate(label, lambda fit_fn=fit_fn: fit_fn(reference), baseline,
                               dict(**extra, **cfg.sizes(N_q=0)))
        return out

    model = bench(f"loop fit N_ref={cfg.n_ref} d={cfg.d} k={cfg.k}"
                  + ("" if cfg.quick else " (1 round each: minutes per fit)"), case, build,
                  rounds=None if cfg.quick else 1)
    fitted[case] = model
    # the timed fits (the last round's) are checked after the fact, against each other
    probs_of = _fit_case(case, cfg)[2]
    if probs_of is not None:
        p = probs_of(model)
        for other in ("cython", "numba"):
            if other != case and other in fitted:
                assert np.abs(p - fitted[other].probabilities_).max() <= EXACT_ATOL
        if case != "faiss+numpy" and "faiss+numpy" in fitted:
            diff = np.abs(p - fitted["faiss+numpy"].probabilities)
            assert diff.mean() <= FAISS_MEAN_ATOL, diff.mean()


# ------------------------------------------------------------------ scoring new points
SCORE_CASES = ["faiss+numpy", "cython", "numba", "sklearn-LOF"]


def _score_candidate(case, cfg, reference, queries, faiss_flat, knn_expected, fitted):
    """Candidate scoring all queries with the model fitted on the reference, checked first."""
    Qc = queries[:cfg.n_check]
    D_ref, I_ref = knn_expected
    if case == "sklearn-LOF":
        lof = _get_fitted(case, cfg, reference, fitted)
        _check_lof_neighbours(lof, Qc, knn_expected, cfg.k)
        assert np.isfinite(lof.score_samples(Qc)).all()
        return Candidate("peer B: sklearn LocalOutlierFactor.score_samples (fit outside)",
                         lambda: lof.score_samples(queries),
                         extra=dict(peer="scikit-learn", **cfg.sizes()))
    if case == "faiss+numpy":
        fit = _get_fitted(case, cfg, reference, fitted)
        # same fit, exact query neighbours: differs only by faiss's float32 rounding
        expected = fastzsl.loop_score(D_ref, I_ref, fit, backend="numpy")
        diff = np.abs(_faiss_score(faiss_flat, Qc, cfg.k, fit) - expected)
        assert diff.mean() <= FAISS_MEAN_ATOL, diff.mean()
        return Candidate("peer A: faiss IndexFlatL2.search + fastzsl loop_score(numpy)",
                         lambda: _faiss_score(faiss_flat, queries, cfg.k, fit), True,
                         dict(peer="faiss-cpu + fastzsl numpy LoOP",
                              check_max_abs_diff=float(diff.max()), **cfg.sizes()))
    model = _get_fitted(case, cfg, reference, fitted)
    expected = fastzsl.loop_score(D_ref, I_ref, model.fit_, backend="numpy")
    diff = np.abs(np.asarray(model.outlier_probability(Qc)) - expected)
    assert diff.max() <= EXACT_ATOL, diff.max()
    return Candidate(f"fastzsl LoOP.outlier_probability ({case})",
                     lambda: model.outlier_probability(queries),
                     extra=dict(peer="fastzsl", backend=case, **cfg.sizes()))


@pytest.mark.parametrize("case", SCORE_CASES)
def test_loop_score(case, bench, cfg, reference, queries, faiss_flat, knn_expected, fitted):
    def build(stack):
        return {c: _unavailable(c) or _score_candidate(c, cfg, reference, queries, faiss_flat,
                                                       knn_expected, fitted)
                for c in SCORE_CASES}

    bench(f"loop score N_ref={cfg.n_ref} N_q={cfg.n_q} d={cfg.d} k={cfg.k}", case, build)


# ------------------------------------------------------------------ in-sample fit, 10k
def _pynomaly(X, k, **kw):
    from PyNomaly import loop as pynomaly_loop
    model = pynomaly_loop.LocalOutlierProbability(X, extent=3, n_neighbors=k, **kw).fit()
    return np.asarray(model.local_outlier_probabilities, dtype=np.float64)


PYNOMALY_CONFIGS = {
    "PyNomaly-default": dict(),
    "PyNomaly-numba": dict(use_numba=True, n_jobs=-1),
}


@pytest.fixture(scope="session")
def fit_data(cfg, reference):
    X = np.ascontiguousarray(reference[:cfg.n_fit])
    expected = fastzsl.LoOP(n_neighbors=cfg.k, backend="numpy").fit(X).probabilities_
    return X, expected


INSAMPLE_CASES = ["PyNomaly-numba", "PyNomaly-default", "cython", "numba", "numpy",
                  "sklearn-LOF"]


def _insample_candidate(case, cfg, X, expected):
    sizes = dict(N=cfg.n_fit, d=cfg.d, k=cfg.k)
    if case in PYNOMALY_CONFIGS:
        kw = PYNOMALY_CONFIGS[case]
        diff = np.abs(_pynomaly(X, cfg.k, **kw) - expected)  # also compiles the JIT
        assert diff.max() <= PYNOMALY_ATOL, diff.max()
        return Candidate(
            f"PyNomaly 0.4.0 LocalOutlierProbability.fit ({kw or 'default: use_numba=False'})",
            lambda: _pynomaly(X, cfg.k, **kw), case == "PyNomaly-numba",
            dict(peer="PyNomaly", pynomaly_kwargs=repr(kw),
                 check_max_abs_diff=float(diff.max()), **sizes))
    if case == "sklearn-LOF":
        lof = _lof(cfg.k).fit(X)
        assert np.isfinite(lof.negative_outlier_factor_).all()
        return Candidate("sklearn LocalOutlierFactor(novelty=True).fit (LOF, not LoOP)",
                         lambda: _lof(cfg.k).fit(X), extra=dict(peer="scikit-learn", **sizes))
    diff = np.abs(fastzsl.LoOP(n_neighbors=cfg.k, backend=case).fit(X).probabilities_ - expected)
    assert diff.max() <= EXACT_ATOL, diff.max()
    return Candidate(f"fastzsl LoOP.fit ({case})",
                     lambda: fastzsl.LoOP(n_neighbors=cfg.k, backend=case).fit(X),
                     extra=dict(peer="fastzsl", backend=case, **sizes))


@pytest.mark.parametrize("case", INSAMPLE_CASES)
def test_loop_fit_insample(case, bench, cfg, fit_data):
    X, expected = fit_data

    def build(stack):
        return {c: _unavailable(c) or _insample_candidate(c, cfg, X, expected)
                for c in INSAMPLE_CASES}

    bench(f"loop fit N={cfg.n_fit} d={cfg.d} k={cfg.k} (in-sample)", case, build)

