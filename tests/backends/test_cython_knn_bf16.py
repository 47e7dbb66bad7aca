"""The BF16 screen of float32 kNN (fastzsl/backends/_knn_bf16.py, csrc/cpu/knn_bf16.*).

The screen ranks rows rounded to bfloat16 and its certificate decides which queries' lists
hold their whole answer; a certificate too loose would silently drop true neighbours. Every
search here is compared bit for bit with the float32 kernel (``knn_cpu.knn``) and the
direct kernel, through the portable tiles (``FASTZSL_BF16=emulate``, every CPU) and the
AVX512_BF16 ones where the CPU has them. The bound tests check each inequality of the
certificate on real lists, against float64 arithmetic.
"""
import pickle

import numpy as np
import pytest

from fastzsl.testing import bfloat16_round, make_blobs

knn_cpu = pytest.importorskip("fastzsl._ext.knn_cpu", reason="cython extension not built")
from fastzsl.backends import _knn_bf16, cython_  # noqa: E402 (after the skip)

MODES = ["emulate"] + (["hw"] if knn_cpu.bf16_hw_available() else [])
U32 = 2.0**-24


@pytest.fixture
def screen(request, monkeypatch):
    """The screen's tiles for this test: "emulate" or "hw" (FASTZSL_BF16=auto on a CPU with
    AVX512_BF16). On these small references the lists' upkeep would exceed what the screen
    saves and the float32 kernel would answer; the rule is lifted so that the screen runs."""
    monkeypatch.setenv("FASTZSL_BF16", "auto" if request.param == "hw" else request.param)
    monkeypatch.setattr(_knn_bf16, "UPKEEP_PER_SAVED_PRODUCT", np.inf)
    return request.param


def _fp32_calls(monkeypatch):
    """Counts the queries the float32 kernel answers inside _knn_bf16 (calls: how many per
    call; asked: the queries themselves)."""
    calls, asked = [], []
    real = knn_cpu.knn

    class Spy:
        def __getattr__(self, name):
            return getattr(knn_cpu, name)

        def knn(self, Q, R, k, self_offset, prepared=None):
            calls.append(len(Q))
            asked.append(np.array(Q))
            return real(Q, R, k, self_offset, prepared)
    Spy.asked = asked
    return Spy(), calls


def _screened(monkeypatch, screen, Q, R, k, self_offset=-1):
    """_knn_bf16.knn with a spy for the float32 kernel, its answers checked equal to the
    float32 kernel's bit for bit: (pays, calls, spy) (see _fp32_calls)."""
    spy, calls = _fp32_calls(monkeypatch)
    Q = np.ascontiguousarray(Q)
    D, I, pays = _knn_bf16.knn(spy, Q, R, k, self_offset, knn_cpu.reference_norms(R),
                               lambda: _knn_bf16.prepare(knn_cpu, R), screen)
    D0, I0 = knn_cpu.knn(Q, R, k, self_offset)
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)
    return pays, calls, spy


def _check(Q, R, k, self_offset=-1):
    """cython_.knn (through the screen) equals the float32 and the direct kernels, bit for
    bit, with and without a prepared reference, and the prepared form survives pickling."""
    D0, I0 = knn_cpu.knn(Q, R, k, self_offset)
    D_dir, I_dir = knn_cpu.knn_direct(Q, R, k, self_offset)
    np.testing.assert_array_equal(D0, D_dir)
    np.testing.assert_array_equal(I0, I_dir)
    prepared = cython_.prepare(R)
    for prep in (prepared, prepared, None, pickle.loads(pickle.dumps(prepared))):
        D, I = cython_.knn(Q, R, k, self_offset, prep)
        assert D.dtype == np.float32 and I.dtype == np.int64
        np.testing.assert_array_equal(D, D0)
        np.testing.assert_array_equal(I, I0)


# ------------------------------------------------------------------------- the rounding
def test_rounding_is_round_to_nearest_even_with_subnormals_to_zero():
    tiny = np.finfo(np.float32).tiny
    one_ulp = 2.0**-7  # bfloat16's spacing at 1
    x = np.array([1.0, 1 + one_ulp / 2, 1 + 3 * one_ulp / 2, 1 + one_ulp / 2 + 2**-20,
                  -1 - one_ulp / 2, 3.14159, -2.5e-3, 1e30, tiny, tiny * 0.75, -tiny / 3,
                  0.0, -0.0, 65504.0, 1 + one_ulp / 2 - 2**-20], dtype=np.float32)
    want = bfloat16_round(x)
    # ties go to the even neighbour, subnormals to 0, FLT_MIN stays
    assert want[1] == 1.0 and want[2] == 1 + 2 * one_ulp and want[3] == 1 + one_ulp
    assert want[4] == -1.0 and want[8] == tiny and want[9] == 0 and want[10] == 0
    stats = knn_cpu.bf16_row_stats(x[:, None])  # one component per row
    got = np.sqrt(stats[0]) * np.sign(x)  # exact: 8 significant bits square exactly
    np.testing.assert_array_equal(np.abs(got), np.abs(want.astype(np.float64)))
    np.testing.assert_array_equal(stats[1], np.abs(x.astype(np.float64) - want))
    np.testing.assert_array_equal(stats[2], x.astype(np.float64) ** 2)


@pytest.mark.parametrize("d", [1, 2, 33, 64])
def test_row_stats_of_many_components(rng, d):
    X = (rng.normal(size=(50, d)) * rng.uniform(0.01, 100, size=(50, 1))).astype(np.float32)
    rounded = bfloat16_round(X).astype(np.float64)
    stats = knn_cpu.bf16_row_stats(X)
    # double sums of d terms: within (d + 2) u' relative of the exact sums, either order
    rtol = (d + 2) * 2.0**-53 * 2
    np.testing.assert_allclose(stats[0], (rounded**2).sum(1), rtol=rtol)
    np.testing.assert_allclose(stats[1], np.sqrt(((X - rounded) ** 2).sum(1)), rtol=rtol)
    np.testing.assert_allclose(stats[2], (X.astype(np.float64) ** 2).sum(1), rtol=rtol)


# ---------------------------------------------------------------- the certificate's bounds
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("d", [32, 33, 130])
def test_screen_values_are_within_the_float32_bound_of_the_rounded_rows(rng, mode, d):
    """With every row listed, V_j = R'_j - 2 P'_j for all j: within b (the float32 kernel's
    bound, no safety factor) of E'_j - Q', computed exactly enough in float64."""
    R = (rng.normal(size=(300, d)) + rng.normal(size=d) * 3).astype(np.float32)
    Q = rng.normal(size=(40, d)).astype(np.float32)
    prep = _knn_bf16.prepare(knn_cpu, R)
    V, cand = knn_cpu.bf16_screen(Q, prep.packed, prep.rounded_norms, len(R), -1, mode == "hw")
    assert (np.sort(cand, axis=1) == np.arange(len(R))).all()
    Qr, Rr = bfloat16_round(Q).astype(np.float64), bfloat16_round(R).astype(np.float64)
    Qn = (Qr**2).sum(1)
    E_rounded = ((Qr[:, None, :] - Rr[cand]) ** 2).sum(2)
    b = ((d + 3) * U32 * 1.0001) * (Qn + prep.rounded_norm_max)
    err = np.abs(V.astype(np.float64) + Qn[:, None] - E_rounded)
    assert (err <= b[:, None]).all(), (err / b[:, None]).max()
    # the rounding's move of the distance: |sqrt(E) - sqrt(E')| <= ||dq|| + ||dr_j||
    E = ((Q[:, None, :].astype(np.float64) - R[cand].astype(np.float64)) ** 2).sum(2)
    stats_q = knn_cpu.bf16_row_stats(Q)
    stats_r = knn_cpu.bf16_row_stats(R)
    moved = np.abs(np.sqrt(E) - np.sqrt(E_rounded))
    assert (moved <= (stats_q[1][:, None] + stats_r[1][cand]) * (1 + 1e-9) + 1e-12).all()


# ---------------------------------------------------------------- answers, bit for bit
@pytest.mark.parametrize("screen", MODES, indirect=True)
@pytest.mark.parametrize("d", [32, 33, 64, 130])
@pytest.mark.parametrize("self_offset", [-1, 0, 7])
def test_standard_normal_rows(rng, screen, d, self_offset):
    R = rng.normal(size=(2500, d)).astype(np.float32)
    Q = R[7:7 + 1300] if self_offset == 7 else (R[:1300] if self_offset == 0
                                                 else rng.normal(size=(1300, d)).astype(np.float32))
    _check(np.ascontiguousarray(Q), R, 12, self_offset)


@pytest.mark.parametrize("screen", MODES, indirect=True)
@pytest.mark.parametrize("k", [1, 40, 299])
def test_k_up_to_the_reference(rng, screen, k):
    R = rng.normal(size=(300, 48)).astype(np.float32)
    _check(R, R, k, 0)
    _check(rng.normal(size=(260, 48)).astype(np.float32), R, min(k, 300), -1)


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_exact_duplicates_and_ties(rng, screen):
    """Rows repeated 30 times: ties at the k-th distance, broken by index as the kernels do."""
    base = rng.normal(size=(60, 40)).astype(np.float32)
    R = np.repeat(base, 30, axis=0)
    _check(R[::7].copy(), R, 45, -1)
    _check(R, R, 10, 0)


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_rows_bfloat16_cannot_tell_apart(rng, screen, monkeypatch):
    """Near-duplicates 1e-5 apart (one bfloat16 row) far more numerous than a list: the
    certificate fails for their queries (and for the few others whose neighbours reach such
    a cluster) and the float32 kernel answers them in one call, bit for bit."""
    base = rng.normal(size=(20, 40)).astype(np.float32)
    R = np.concatenate([base + 1e-5 * rng.normal(size=(20, 40)).astype(np.float32)
                        for _ in range(300)] + [rng.normal(size=(3000, 40)).astype(np.float32)])
    Q = np.concatenate([rng.normal(size=(400, 40)), base[:5] + 1e-6]).astype(np.float32)
    pays, calls, spy = _screened(monkeypatch, screen, Q, R, 10)
    # one call for the failed queries
    assert pays and len(calls) == 1 and 5 <= calls[0] <= 0.1 * len(Q), calls
    asked = spy.asked[0]
    assert all((asked == q).all(axis=1).any() for q in Q[-5:])
    _check(Q.astype(np.float32), R, 10, -1)


@pytest.mark.parametrize("screen", MODES, indirect=True)
@pytest.mark.parametrize("self_offset", [-1, 0])
def test_clusters_far_from_the_origin_fall_back_after_the_first_chunk(screen, self_offset,
                                                                      monkeypatch):
    """Blobs (norms ~60x the k-th distance): bfloat16 rounding moves distances by more than
    the gaps between neighbours, the pilot's queries fail, and the float32 kernel answers
    every query in one call."""
    X, _ = make_blobs(3000, 40, seed=4)
    Q = X if self_offset == 0 else X[:2000] + np.float32(0.01)
    pays, calls, _ = _screened(monkeypatch, screen, Q, X, 10, self_offset)
    assert calls == [len(Q)] and not pays, calls


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_standard_normal_rows_need_no_float32_kernel(rng, screen, monkeypatch):
    """Where norms are comparable to the k-th distance the screen certifies every query."""
    R = rng.normal(size=(4000, 64)).astype(np.float32)
    Q = rng.normal(size=(2100, 64)).astype(np.float32)
    pays, calls, _ = _screened(monkeypatch, screen, Q, R, 20)
    assert calls == [] and pays


@pytest.mark.parametrize("screen", MODES, indirect=True)
@pytest.mark.parametrize("scale", [1e-36, 1e-20, 1e18])
def test_tiny_and_huge_values(rng, screen, scale):
    """Components near and below FLT_MIN (flushed to 0 by the rounding) and norms near the
    float32 products' limit (no screen): the same bits either way."""
    R = (rng.normal(size=(600, 36)) * scale).astype(np.float32)
    Q = (rng.normal(size=(300, 36)) * scale).astype(np.float32)
    _check(Q, R, 8, -1)
    _check(R, R, 8, 0)


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_mixed_scales_and_sparse_rows(rng, screen):
    """Rows of very different norms, and rows with many exact zeros."""
    R = rng.normal(size=(1500, 50)) * rng.choice([0.01, 1.0, 30.0], size=(1500, 1))
    R[rng.random(R.shape) < 0.6] = 0.0
    R = R.astype(np.float32)
    _check(R, R, 15, 0)


def test_small_dims_and_few_queries_run_the_float32_kernel(rng, monkeypatch):
    monkeypatch.setenv("FASTZSL_BF16", "emulate")
    R = rng.normal(size=(500, 16)).astype(np.float32)
    assert _knn_bf16.prepare(knn_cpu, R) is None  # below MIN_DIM: nothing to prepare
    assert isinstance(cython_.prepare(R), tuple)
    called = []
    monkeypatch.setattr(_knn_bf16, "knn", lambda *a: called.append(1))
    R = rng.normal(size=(500, 64)).astype(np.float32)
    D, I = cython_.knn(R[:_knn_bf16.FIRST_CHUNK], R, 5, 0, cython_.prepare(R))
    assert called == []
    D0, I0 = knn_cpu.knn(R[:_knn_bf16.FIRST_CHUNK], R, 5, 0)
    np.testing.assert_array_equal(I, I0)


def test_searches_of_few_queries_do_not_make_the_screens_view(rng, monkeypatch):
    """Up to knn_cpu.split_max_queries queries skip the screen until a larger search has
    made its view of the reference (rounding and packing the reference costs more than
    the screen saves them); after that, searches of more than FIRST_CHUNK use it."""
    monkeypatch.setenv("FASTZSL_BF16", "emulate")
    monkeypatch.setattr(_knn_bf16, "UPKEEP_PER_SAVED_PRODUCT", np.inf)  # as in `screen`
    real, called = _knn_bf16.knn, []
    monkeypatch.setattr(_knn_bf16, "knn", lambda *a: called.append(len(a[1])) or real(*a))
    R = rng.normal(size=(3000, 64)).astype(np.float32)
    n, few = knn_cpu.split_max_queries, _knn_bf16.FIRST_CHUNK + 1
    prepared = cython_.prepare(R)
    for n_q, prep in ((n, None), (n, prepared), (few, prepared), (n + 1, None),
                      (n + 1, prepared), (few, prepared)):
        D, I = cython_.knn(R[:n_q], R, 5, 0, prep)
        D0, I0 = knn_cpu.knn(R[:n_q], R, 5, 0)
        np.testing.assert_array_equal(D, D0)
        np.testing.assert_array_equal(I, I0)
    assert prepared.has_view()
    assert called == [n + 1, n + 1, few]


def test_the_setting(monkeypatch):
    monkeypatch.setenv("FASTZSL_BF16", "off")
    assert _knn_bf16.mode(knn_cpu) is None
    monkeypatch.setenv("FASTZSL_BF16", "Emulate")
    assert _knn_bf16.mode(knn_cpu) == "emulate"
    monkeypatch.setenv("FASTZSL_BF16", "auto")
    assert _knn_bf16.mode(knn_cpu) == ("hw" if knn_cpu.bf16_hw_available() else None)
    monkeypatch.delenv("FASTZSL_BF16")
    assert _knn_bf16.mode(knn_cpu) == ("hw" if knn_cpu.bf16_hw_available() else None)
    monkeypatch.setenv("FASTZSL_BF16", "fast")
    with pytest.raises(ValueError, match="FASTZSL_BF16 must be auto, off or emulate"):
        _knn_bf16.mode(knn_cpu)


def test_hw_tiles_are_refused_without_the_instructions(rng):
    if knn_cpu.bf16_hw_available():
        pytest.skip("this CPU has AVX512_BF16")
    R = rng.normal(size=(40, 32)).astype(np.float32)
    prep = _knn_bf16.prepare(knn_cpu, R)
    with pytest.raises(RuntimeError, match="AVX512_BF16"):
        knn_cpu.bf16_screen(R, prep.packed, prep.rounded_norms, 5, 0, True)


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_a_reference_the_screen_does_not_pay_for_is_not_screened_again(screen, monkeypatch):
    X, _ = make_blobs(3000, 40, seed=4)
    prepared = cython_.prepare(X)
    D0, I0 = cython_.knn(X, X, 10, 0, prepared)  # the first chunk fails: float32 after it
    tried = []
    real = _knn_bf16.knn
    monkeypatch.setattr(_knn_bf16, "knn", lambda *a: tried.append(1) or real(*a))
    D, I = cython_.knn(X, X, 10, 0, prepared)
    assert tried == []
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)
    D_dir, I_dir = knn_cpu.knn_direct(X, X, 10, 0)
    np.testing.assert_array_equal(D, D_dir)
    np.testing.assert_array_equal(I, I_dir)
    cython_.knn(X, X, 10, 0, cython_.prepare(X))  # a fresh preparation tries again
    assert tried == [1]


@pytest.mark.parametrize("screen", MODES, indirect=True)
@pytest.mark.parametrize("self_offset", [-1, 0])
def test_float64_input_through_both_screens(rng, screen, self_offset, monkeypatch):
    """float64 queries: the float32 screen's search runs through the BF16 screen; the
    answers stay the float64 kernel's, bit for bit."""
    R = rng.normal(size=(3000, 48))
    Q = R[:1200] if self_offset == 0 else rng.normal(size=(1200, 48))
    screened = []
    real = _knn_bf16.knn
    monkeypatch.setattr(_knn_bf16, "knn", lambda *a: screened.append(1) or real(*a))
    prepared = cython_.prepare(R)
    for prep in (prepared, prepared, None):
        D, I = cython_.knn(Q, R, 10, self_offset, prep)
        D_dir, I_dir = knn_cpu.knn_direct(Q, R, 10, self_offset)
        assert D.dtype == np.float64
        np.testing.assert_array_equal(D, D_dir)
        np.testing.assert_array_equal(I, I_dir)
    assert len(screened) == 3


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_lists_too_long_to_pay_for_run_the_float32_kernel(rng, screen, monkeypatch):
    """Where the pilot's lists would cost more to keep than the screen saves, the float32
    kernel answers every query (here forced: no upkeep is cheap enough)."""
    monkeypatch.setattr(_knn_bf16, "UPKEEP_PER_SAVED_PRODUCT", 0.0)
    R = rng.normal(size=(3000, 64)).astype(np.float32)
    Q = rng.normal(size=(700, 64)).astype(np.float32)
    pays, calls, _ = _screened(monkeypatch, screen, Q, R, 10)
    assert calls == [len(Q)] and not pays


@pytest.mark.parametrize("screen", MODES, indirect=True)
def test_long_lists_in_smaller_blocks_and_chunks(rng, screen, monkeypatch):
    """k = 300 at d = 96: lists of 1,000+ entries; with the byte caps lowered, blocks of a
    few micro-tiles and chunks of the pilot's size: the same bits."""
    monkeypatch.setattr(_knn_bf16, "CHUNK_BYTES", 1 << 20)
    R = rng.normal(size=(4000, 96)).astype(np.float32)
    Q = rng.normal(size=(700, 96)).astype(np.float32)
    _check(Q, R, 300, -1)
    _check(R[:900], R, 300, 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("L", [1, 37, 300])
def test_screen_lists_hold_the_smallest_values(rng, mode, L):
    """A list of L (kept in a reservoir of 2 L, cut at its L smallest when full) equals the
    L smallest of every row's screened value, largest first; rows with the list's largest
    value may be either side of the cut, no row below it is left out."""
    R = np.round(rng.normal(size=(2000, 40)), 1).astype(np.float32)  # many equal values
    Q = np.round(rng.normal(size=(30, 40)), 1).astype(np.float32)
    prep = _knn_bf16.prepare(knn_cpu, R)
    V_all, I_all = knn_cpu.bf16_screen(Q, prep.packed, prep.rounded_norms, len(R), 3,
                                       mode == "hw")
    V, I = knn_cpu.bf16_screen(Q, prep.packed, prep.rounded_norms, L, 3, mode == "hw")
    assert (np.diff(V, axis=1) <= 0).all()
    for q in range(len(Q)):
        want = np.sort(V_all[q][I_all[q] >= 0])[:L]
        np.testing.assert_array_equal(np.sort(V[q]), want)
        value = dict(zip(I_all[q], V_all[q]))
        assert all(value[i] == v for i, v in zip(I[q], V[q]))
        assert 3 + q not in set(I[q])  # its own row left out
        below = {i for i, v in value.items() if v < V[q][0]}
        assert below <= set(I[q])
