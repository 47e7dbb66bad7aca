"""kNN search: fastzsl.knn (exact, per backend; method="faiss") and fastzsl.faiss.IndexFlatL2
vs raw faiss IndexFlatL2.

Group ``knn N_ref=.. N_q=.. d=50 k=20``: every query. The NumPy backend is far too slow
at full size, so it runs there only with --quick; group ``knn subset ...`` times every
method on the first 100 queries, NumPy included.

Each case first checks its result on the first n_check queries against fastzsl's NumPy
reference (distances within fastzsl.testing.TOL for float32, rtol 1e-3 for faiss, which
expands the squared distance in float32; neighbour sets equal up to ties).

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...; the group's
first test times all its rows), so a fast or slow phase of the shared machine falls on every
row alike; ratios are of the same rounds.

Every row records the FLOP of the distance GEMM (2 N_q N_ref d), so the report shows its
rate in GFLOP/s (a lower bound for the distance part: the time includes the selection), and
the full-size group has a reference row: this machine's square float32 GEMM rate (NumPy's
BLAS, all threads), the "machine peak" the kernels are measured against. Every row of that
group records ``fraction_of_sgemm`` (its GFLOP/s over that row's, same rounds) and ``blas``:
the BLAS libraries loaded and the kernel each runs (threadpoolctl: library, version, core
type, threads; the cython kernels call SciPy's OpenBLAS, NumPy its own, faiss its own).
``cython-float64`` searches the same data in float64 (the float32 screen of
fastzsl/backends/_knn_screen.py): its ratio to the float32 row is the float64 overhead.
``cython-blas`` runs the cython kernel with its pass-1 dot products on one SciPy sgemm per
tile (FASTZSL_TILES=blas) instead of its own tiles (csrc/cpu/knn_f32_tiles.h: AVX-512, or
AVX2 up to d = 256, the default where the CPU has them): the tiles' gain, same rounds.

Where the environment sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (some CI machines: AVX2
kernels on an AVX-512 CPU), run it a second time without them, for this command only, to
show the machine's peak as well (tests and CI keep them as they are):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python -m pytest \
        benchmarks/bench_knn.py -p no:cacheprovider -k "test_knn and not subset"
"""
import os

import numpy as np
import pytest

import fastzsl
from fastzsl.testing import (
    TOL, assert_knn_equal, assert_within_bound, backend_is_available, make_blobs,
    matmul_error_bound,
)

from _harness import RUN_MODEL, Candidate, trained_run_features

FAISS_RTOL = 1e-3
CASES = ["cython", "cython-blas", "cython-float64", "numba", "numpy", "fastzsl-faiss",
         "fastzsl.faiss-IndexFlatL2", "faiss-IndexFlatL2"]


def blas_kernels() -> list:
    """The BLAS libraries loaded in this process and the kernel each runs (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return [{"note": "threadpoolctl not installed"}]
    return [{key: lib.get(key) for key in ("internal_api", "prefix", "version", "architecture",
                                           "num_threads", "filepath")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def _make(case, reference, k, faiss_flat):
    """(label, fn(Q) -> (D, I), extra_info, is_baseline), or a str: why it is skipped."""
    if case == "faiss-IndexFlatL2":
        return ("faiss IndexFlatL2.search (index built outside the timer)",
                lambda Q: faiss_flat.search(Q, k), dict(peer="faiss-cpu"), True)
    if case == "fastzsl.faiss-IndexFlatL2":
        from fastzsl import faiss as fastzsl_faiss

        index = fastzsl_faiss.IndexFlatL2(reference.shape[1])
        index.add(reference)  # built (norms cached) by the check's first search, untimed
        return ("fastzsl.faiss IndexFlatL2.search (faiss's calls on the exact kernels)",
                lambda Q: index.search(Q, k), dict(peer="fastzsl", method="fastzsl.faiss"),
                False)
    if case == "fastzsl-faiss":
        return ('fastzsl.knn(method="faiss") (builds IndexFlatL2 per call)',
                lambda Q: fastzsl.knn(Q, reference, k, method="faiss"),
                dict(peer="fastzsl", method="faiss"), False)
    if case == "cython-blas":
        if not backend_is_available("cython"):
            return "backend 'cython' unavailable"
        return ("fastzsl.knn exact (cython), pass 1 on BLAS sgemm tiles (FASTZSL_TILES=blas)",
                lambda Q: _with_f32_tiles("blas", lambda: fastzsl.knn(Q, reference, k,
                                                                      backend="cython")),
                dict(peer="fastzsl", backend="cython", method="exact", pass1="blas"), False)
    if case == "cython-float64":
        if not backend_is_available("cython"):
            return "backend 'cython' unavailable"
        ref64 = np.ascontiguousarray(reference, dtype=np.float64)
        return ("fastzsl.knn exact (cython), float64 input (float32 screen, float64 re-rank)",
                lambda Q: fastzsl.knn(np.asarray(Q, dtype=np.float64), ref64, k,
                                      backend="cython"),
                dict(peer="fastzsl", backend="cython", method="exact", input_dtype="float64"),
                False)
    if not backend_is_available(case):
        return f"backend {case!r} unavailable"
    return (f"fastzsl.knn exact ({case})",
            lambda Q: fastzsl.knn(Q, reference, k, backend=case),
            dict(peer="fastzsl", backend=case, method="exact"), False)


def _check(case, fn, cfg, queries, knn_expected):
    D, I = fn(queries[:cfg.n_check])
    D_ref, I_ref = knn_expected
    tol = dict(TOL[np.dtype(cfg.dtype)])
    if "faiss" in case:
        # faiss: ||q||^2 - 2 q.r + ||r||^2 in float32, relative error ~1e-4 on these data
        tol["rtol"] = FAISS_RTOL
    assert_knn_equal(np.maximum(D, 0), I, D_ref, I_ref, **tol)


def _candidates(cfg, reference, queries, faiss_flat, knn_expected, Q, cases, flop, sizes):
    """case -> Candidate searching Q (or the reason it is skipped), each checked first."""
    out = {}
    for case in cases:
        made = _make(case, reference, cfg.k, faiss_flat)
        if isinstance(made, str):
            out[case] = made
            continue
        label, fn, extra, baseline = made
        _check(case, fn, cfg, queries, knn_expected)  # correctness before time
        out[case] = Candidate(label, lambda fn=fn: fn(Q), baseline,
                              dict(flop=flop, **extra, **sizes))
    return out


SQUARE = 4096


def _square_sgemm(cfg):
    """The machine's square float32 GEMM rate, the reference for the kNN kernels' GFLOP/s."""
    n = SQUARE // 4 if cfg.quick else SQUARE
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n), dtype=np.float32)
    B = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(A[:8], B, out=out[:8])
    # an n-term float32 product: gamma_n |A| |B| whatever the BLAS kernel (testing.py)
    assert_within_bound(out[:8, :4], A[:8].astype(np.float64) @ B[:, :4],
                        matmul_error_bound(A[:8], B[:, :4], np.float32), "sgemm")
    return Candidate(f"machine peak reference: square sgemm {n}^3 (NumPy BLAS, all threads)",
                     lambda: np.matmul(A, B, out=out),
                     extra=dict(peak_reference=True, flop=2 * n ** 3, peer="numpy"))


def _group(cfg):
    return f"knn N_ref={cfg.n_ref} N_q={cfg.n_q} d={cfg.d} k={cfg.k}"


@pytest.mark.parametrize("case", CASES + ["square-sgemm"])
def test_knn(case, bench, benchmark, _groups, cfg, reference, queries, faiss_flat,
             knn_expected):
    def build(stack):
        cases = [c for c in CASES if c != "numpy" or cfg.quick]
        out = _candidates(cfg, reference, queries, faiss_flat, knn_expected, queries, cases,
                          2 * cfg.n_q * cfg.n_ref * cfg.d, cfg.sizes())
        if not cfg.quick:
            out["numpy"] = ("numpy backend: too slow for 10k x 100k; timed in the "
                            "'knn subset' group")
        out["square-sgemm"] = _square_sgemm(cfg)
        return out

    bench(_group(cfg), case, build)
    _record_fraction_of_sgemm(benchmark, _groups[_group(cfg)], case)


def _record_fraction_of_sgemm(benchmark, entry, case):
    """This row's GFLOP/s over the square sgemm's, from the same interleaved rounds."""
    if isinstance(entry, Exception) or case not in entry["timed"]:
        return
    cand, peak = entry["timed"][case], entry["timed"]["square-sgemm"]
    rate = cand.extra["flop"] / float(np.median(entry["times"][case]))
    peak_rate = peak.extra["flop"] / float(np.median(entry["times"]["square-sgemm"]))
    benchmark.extra_info.update(fraction_of_sgemm=rate / peak_rate,
                                sgemm_gflops=peak_rate / 1e9, blas=blas_kernels())


@pytest.mark.parametrize("case", CASES)
def test_knn_subset(case, bench, cfg, reference, queries, faiss_flat, knn_expected):
    n = cfg.n_subset
    Q = np.ascontiguousarray(queries[:n])

    def build(stack):
        return _candidates(cfg, reference, queries, faiss_flat, knn_expected, Q, CASES,
                           2 * n * cfg.n_ref * cfg.d, cfg.sizes(N_q=n))

    bench(f"knn subset N_ref={cfg.n_ref} N_q={n} d={cfg.d} k={cfg.k} "
          f"(first {n} queries, NumPy backend included)", case, build)



# ------------------------------------------------------------------ cosine (word vectors)
COSINE_D = 300  # word vectors (GloVe, word2vec)
COSINE_CASES = ["faiss-IndexFlatIP", "cython-ExactIndex", "cython-knn"]


@pytest.fixture(scope="module")
def cosine_data(cfg):
    """Reference and query rows in d = 300 (seeded, not unit length)."""
    n_ref, n_q = (10_000, 1_000) if cfg.quick else (50_000, 5_000)
    rng = np.random.default_rng(7)
    return (rng.standard_normal((n_ref, COSINE_D), dtype=np.float32),
            rng.standard_normal((n_q, COSINE_D), dtype=np.float32))


@pytest.mark.parametrize("case", COSINE_CASES)
def test_knn_cosine(case, bench, cfg, cosine_data):
    """Cosine kNN: faiss IndexFlatIP on rows normalised outside the timer (the baseline),
    fastzsl's ExactIndex(metric="cosine") built outside the timer (it normalises the
    queries per search), and fastzsl.knn(metric="cosine") normalising both per call."""
    R, Q = cosine_data
    k, n = cfg.k, cfg.n_check
    group = f"knn cosine N_ref={len(R)} N_q={len(Q)} d={COSINE_D} k={k}"
    data = "standard normal rows, seeded (not unit length)"

    def build(stack):
        if not backend_is_available("cython"):
            return dict.fromkeys(COSINE_CASES, "backend 'cython' unavailable")
        D_ref, I_ref = fastzsl.knn(Q[:n], R, k, backend="numpy", metric="cosine")
        out = {}
        try:
            import faiss
        except ImportError:
            out["faiss-IndexFlatIP"] = "faiss not installed"
        else:
            def unit(X):
                return np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True))

            Rn, Qn = unit(R), unit(Q)
            index = faiss.IndexFlatIP(COSINE_D)
            index.add(Rn)
            S, I = index.search(Qn[:n], k)
            # faiss's inner products of unit rows in float32: relative error ~1e-6 of 1
            assert_knn_equal(1.0 - S, I, D_ref, I_ref, rtol=FAISS_RTOL)
            out["faiss-IndexFlatIP"] = Candidate(
                "baseline: faiss IndexFlatIP.search on unit rows (normalised outside the "
                "timer)", lambda: index.search(Qn, k), True, dict(peer="faiss-cpu", data=data))
        exact = fastzsl.ExactIndex(R, backend="cython", method="exact", metric="cosine")
        for case_, label, fn in (
                ("cython-ExactIndex", 'fastzsl ExactIndex(metric="cosine").search (built '
                 "outside the timer; normalises the queries)",
                 lambda X: exact.search(X, k)),
                ("cython-knn", 'fastzsl.knn(metric="cosine") (normalises both per call)',
                 lambda X: fastzsl.knn(X, R, k, backend="cython", metric="cosine"))):
            D, I = fn(Q[:n])
            assert_knn_equal(D, I, D_ref, I_ref, **TOL[np.dtype(np.float32)])
            out[case_] = Candidate(label, lambda fn=fn: fn(Q), False,
                                   dict(peer="fastzsl", backend="cython", metric="cosine",
                                        data=data))
        return out

    bench(group, case, build)


# ------------------------------------------------------------- BF16 screen (float32 input)
# Rows where the screen pays (standard normal: norms comparable to the k-th distance) and
# where it does not: the blobs of the groups above (norms ~70x the k-th distance: the pilot
# fails the certificate and the float32 kernel answers), and the trained run's LoOP
# reference when there is one (the pilot certifies, but the lists it needs cost more to keep
# than the screen saves at d = 50, so the float32 kernel answers).
BF16_DATA = [("normal", 128), ("normal", 512), ("blobs", 128), ("run", 50)]
BF16_DATA_NAMES = {"normal": "standard normal rows, seeded",
                   "blobs": "synthetic Gaussian blobs, seeded (fastzsl.testing.make_blobs)",
                   "run": f"the LoOP reference of the trained run {RUN_MODEL} (its training "
                          "images in the gate's 50-d PCA; the last 10,000 rows the queries)"}
BF16_CASES = ["float32-kernel", "bf16-screen", "square-sgemm"]


def _bf16_problem(data, d, quick):
    n_ref, n_q = (10_000, 1_000) if quick else ((50_000, 5_000) if d >= 512
                                                 else (100_000, 10_000))
    if data == "run":
        F = trained_run_features()
        if F is None:
            pytest.skip(f"no trained LoOP run at {RUN_MODEL} (run 'fastzsl train' first)")
        n_q = n_q // 10 if quick else n_q
        return np.ascontiguousarray(F[:-n_q]), np.ascontiguousarray(F[-n_q:])
    if data == "blobs":
        X, _ = make_blobs(n_ref + n_q, d, seed=0)
    else:
        X = np.random.default_rng(d).standard_normal((n_ref + n_q, d), dtype=np.float32)
    return np.ascontiguousarray(X[:n_ref]), np.ascontiguousarray(X[n_ref:])


def _with_f32_tiles(mode, fn):
    """fn() with the kNN kernel's pass 1 on the given f32 tiles mode for this call only."""
    from fastzsl._ext import knn_cpu
    with knn_cpu.using_f32_tiles(mode):
        return fn()


def _with_screen(setting, fn):
    """fn() with FASTZSL_BF16=setting for this call only."""
    before = os.environ.get("FASTZSL_BF16")
    os.environ["FASTZSL_BF16"] = setting
    try:
        return fn()
    finally:
        if before is None:
            del os.environ["FASTZSL_BF16"]
        else:
            os.environ["FASTZSL_BF16"] = before


@pytest.mark.parametrize("data,d", BF16_DATA, ids=[f"{a}-d{d}" for a, d in BF16_DATA])
@pytest.mark.parametrize("case", BF16_CASES)
def test_knn_bf16(case, data, d, bench, benchmark, _groups, cfg):
    """fastzsl.knn on float32 input, the BF16 screen (FASTZSL_BF16=auto, where the CPU has
    AVX512_BF16) against the float32 kernel (FASTZSL_BF16=off, the baseline), both whole
    calls (the reference packed per call); answers checked equal bit for bit first."""
    R, Q = _bf16_problem(data, d, cfg.quick)
    k = cfg.k
    group = f"knn bf16 {data} N_ref={len(R)} N_q={len(Q)} d={d} k={k}"

    def build(stack):
        if not backend_is_available("cython"):
            return dict.fromkeys(BF16_CASES[:2], "backend 'cython' unavailable")
        from fastzsl._ext import knn_cpu

        def search(setting):
            return lambda: _with_screen(setting, lambda: fastzsl.knn(Q, R, k,
                                                                     backend="cython"))
        flop = 2 * len(Q) * len(R) * d
        sizes = dict(N_ref=len(R), N_q=len(Q), d=d, k=k, data=BF16_DATA_NAMES[data],
                     flop=flop)
        out = {"float32-kernel": Candidate(
            "baseline: fastzsl.knn exact (cython), float32 kernel (FASTZSL_BF16=off)",
            search("off"), True, dict(peer="fastzsl", **sizes))}
        if knn_cpu.bf16_hw_available():
            D0, I0 = search("off")()
            D1, I1 = search("auto")()
            np.testing.assert_array_equal(D1, D0)
            np.testing.assert_array_equal(I1, I0)
            out["bf16-screen"] = Candidate(
                "fastzsl.knn exact (cython), BF16 screen (AVX512_BF16) + exact re-rank",
                search("auto"), False, dict(peer="fastzsl", **sizes))
        else:
            out["bf16-screen"] = "this CPU has no AVX512_BF16"
        out["square-sgemm"] = _square_sgemm(cfg)
        return out

    bench(group, case, build)
    _record_fraction_of_sgemm(benchmark, _groups[group], case)
