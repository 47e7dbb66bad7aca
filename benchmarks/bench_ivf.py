"""Approximate kNN (faiss ``IndexIVFFlat``) for LoOP: recall@k, speed and LoOP error.

Groups
------
``ivf <data> N_ref=.. N_q=..``
    baseline: exact LoOP (fastzsl exact kNN graph for the fit, exact search for scoring).
    Rows: LoOP with ``knn="ivf"`` at ``nlist = round(4 sqrt(N_ref))`` and a range of
    ``nprobe``; the graph of the fit and the search of the new points both come from the
    IVF index (``nprobe="default"`` is FaissIndex's default). Timed: scoring the N_q new points (the search dominates). extra_info:
    recall@20 of the new points' neighbour sets against the exact ones, and the LoOP error
    on the new points against exact LoOP (mean and max |difference|). Data: ``mapped`` =
    the real mapped Fashion-MNIST training features of a trained run (the LoOP reference
    of ``FASTZSL_BENCH_RUN``, default ``fastzsl-run/model.fzsl``), split into reference
    and new points (skipped without a run); ``blobs`` = seeded Gaussian blobs.
``loop fit N_ref=1000000`` (only with ``FASTZSL_BENCH_SCALE=1``; one round each)
    ``LoOP(knn="ivf").fit`` (the baseline) and ``LoOP(knn="exact").fit`` (the self-join,
    ~5e13 FLOP) on 1M points in a subprocess; peak RSS (VmHWM) beyond the input (loaded into
    memory), and recall@20 of 1,000 sampled rows of the graph (1 for exact).

Rounds are interleaved within each group (conftest ``bench``: A B C, A B C, ...; the group's
first test fits every IVF LoOP, outside the timer, and times all rows).
"""
import json
import os
from pathlib import Path

import numpy as np
import pytest

import fastzsl
from fastzsl.testing import make_blobs

from _harness import RUN_MODEL, Candidate, trained_run_features

K = 20
NPROBES = [1, 2, 4, 8, 16, 32, 64, 128, "default"]


def _recall(I_approx, I_exact):
    hits = [np.intersect1d(a, e).size for a, e in zip(I_approx, I_exact)]
    return float(np.mean(hits) / I_exact.shape[1])


def _mapped(cfg):
    path = Path(RUN_MODEL)
    F = trained_run_features()
    if F is None:
        pytest.skip(f"no trained LoOP run at {path} (run 'fastzsl train' first)")
    F = F[np.random.default_rng(0).permutation(len(F))]
    n_q = 2_000 if cfg.quick else 8_000
    return (F[n_q:], F[:n_q],
            f"real mapped Fashion-MNIST training features ({path}), {len(F) - n_q} reference "
            f"/ {n_q} new points, d={F.shape[1]}")


def _blobs(cfg):
    n_ref, n_q = (20_000, 2_000) if cfg.quick else (100_000, 10_000)
    X, _ = make_blobs(n_ref + n_q, 50, seed=7)
    return X[:n_ref], X[n_ref:], f"seeded Gaussian blobs (10 centres), d=50"


DATA = {"mapped": _mapped, "blobs": _blobs}


@pytest.fixture(scope="module", params=list(DATA))
def study(request, cfg):
    reference, queries, description = DATA[request.param](cfg)
    exact = fastzsl.LoOP(n_neighbors=K, knn="exact").fit(reference)
    return dict(name=request.param, reference=reference, queries=queries,
                description=description, exact=exact,
                exact_p=exact.outlier_probability(queries),
                exact_I=exact.index_.search(queries, K)[1],
                nlist=fastzsl.FaissIndex.default_nlist(len(reference)))


def _group(study):
    return f"ivf {study['name']} N_ref={len(study['reference'])} N_q={len(study['queries'])}"


def _ivf_candidate(study, nprobe):
    default = nprobe == "default"
    if default:
        nprobe = fastzsl.FaissIndex.default_nprobe(study["nlist"])
    if nprobe > study["nlist"]:
        return f"nprobe {nprobe} > nlist {study['nlist']}"
    loop = fastzsl.LoOP(n_neighbors=K, knn="ivf",
                        knn_params={"nlist": study["nlist"], "nprobe": nprobe})
    try:
        loop.fit(study["reference"])
    except ValueError as exc:  # too few lists visited to find k neighbours for every point
        return f"nprobe={nprobe}: {exc}"
    recall = _recall(loop.index_.search(study["queries"], K)[1], study["exact_I"])
    assert recall > 0  # a broken index would find nothing
    return Candidate(f"IVF nlist={study['nlist']} nprobe={nprobe}"
                     + (" (the default)" if default else ""),
                     lambda: loop.outlier_probability(study["queries"]),
                     extra=dict(data=study["description"], nlist=study["nlist"],
                                nprobe=nprobe, recall=recall))


@pytest.mark.parametrize("nprobe", ["exact"] + NPROBES)
def test_ivf(bench, benchmark, study, nprobe):
    def build(stack):
        out = {"exact": Candidate(
            "exact LoOP (fastzsl exact kNN)",
            lambda: study["exact"].outlier_probability(study["queries"]), True,
            dict(data=study["description"], recall=1.0))}
        out.update({n: _ivf_candidate(study, n) for n in NPROBES})
        return out

    p = bench(_group(study), nprobe, build)
    error = np.abs(np.asarray(p) - study["exact_p"])
    if nprobe == "exact":
        np.testing.assert_array_equal(p, study["exact_p"])
    benchmark.extra_info.update(loop_mean_err=float(error.mean()),
                                loop_max_err=float(error.max()))


_FIT_SCRIPT = """
import json, sys, time, numpy as np, fastzsl
X = np.load(sys.argv[1])
method = sys.argv[3]
t = time.perf_counter()
loop = fastzsl.LoOP(n_neighbors=20, knn=method).fit(X)
seconds = time.perf_counter() - t
rows = np.random.default_rng(0).choice(len(X), 1000, replace=False)
# neighbours of sampled reference rows, themselves dropped (k+1, then remove the row's own id)
def without_self(I):
    return [ids[ids != row][:20] for row, ids in zip(rows, I)]
exact = without_self(fastzsl.knn(X[rows], X, 21)[1])
graph = without_self(loop.index_.search(X[rows], 21)[1])
recall = float(np.mean([np.intersect1d(a, b).size for a, b in zip(graph, exact)]) / 20)
info = dict(seconds=seconds, recall=recall)
if method == "ivf":
    info.update(nlist=loop.index_.index.nlist, nprobe=loop.index_.index.nprobe)
json.dump(info, open(sys.argv[2], "w"))
"""


@pytest.mark.skipif(os.environ.get("FASTZSL_BENCH_SCALE", "") in ("", "0"),
                    reason="set FASTZSL_BENCH_SCALE=1 for the 1M-point LoOP fit (minutes)")
@pytest.mark.parametrize("method", ["ivf", "exact"])
def test_loop_fit_one_million_memory(bench, benchmark, tmp_path, run_with_peak_rss, method):
    n = 1_000_000

    def build(stack):
        X, _ = make_blobs(n, 50, seed=11)
        np.save(tmp_path / "X.npy", X)
        input_mb = X.nbytes / 2**20
        del X
        out = {}
        for m in ("ivf", "exact"):
            extra = dict(data="seeded Gaussian blobs (10 centres), d=50")

            def run(m=m, info=extra):  # the child's peak RSS etc. go to its extra_info
                (tmp_path / "fit.py").write_text(_FIT_SCRIPT)
                info["peak_rss_mb"] = run_with_peak_rss(
                    tmp_path / "fit.py", [tmp_path / "X.npy", tmp_path / "fit.json", m])
                info.update(json.loads((tmp_path / "fit.json").read_text()))
                info["peak_rss_beyond_input_mb"] = info["peak_rss_mb"] - input_mb

            out[m] = Candidate(f"LoOP(knn={m!r}).fit in a subprocess", run, m == "ivf", extra)
        return out

    bench(f"loop fit N_ref={n}", method, build, rounds=1)
    info = benchmark.extra_info
    assert info["peak_rss_beyond_input_mb"] < 1536, info
